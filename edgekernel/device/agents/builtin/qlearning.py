"""`qlearning`: learns where to run each inference — on this device's kernel, or offloaded to another
box's CoAP ``POST /infer/{model}`` (the gateway's, a neighbour device's) — from the latency it measures
and the deadlines it misses as the local load changes.

    agents:
      - name: offload
        agent: qlearning
        config: {source: vibration, model: vibration-anomaly, remote: "coap://gw:5683", deadline_ms: 5}

Every `interval_s` it scores the latest `window` samples of `source`. The state is the kernel's
inference queue depth and the last latency seen on each path, each cut into a few bins; the actions
are `local` and `offload`; the reward is the latency in deadlines, minus `miss_penalty` for a miss.
Epsilon-greedy with a decaying epsilon; the Q table is saved in ``ctx.state`` at every report, so
what was learnt survives restarts (and is dropped when the bins change meaning). `policy: local` or
`offload` pins a path and learns nothing. Cumulative counts go to the `output` stream every `report_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from edgekernel.config.base import Id
from edgekernel.device.agents.bus import Subscription
from edgekernel.device.agents.context import Agent, Context, FloatArray
from edgekernel.errors import EdgeKernelError
from edgekernel.link.coap import CoapClient
from edgekernel.link.coap.formats import dumps
from edgekernel.protocol import Encoding, ProtocolError, Sample

ACTIONS = ("local", "offload")
LOCAL, OFFLOAD = 0, 1
STATE_KEY = "qtable"
TABLE_VERSION = 1
MAX_STATES = 4096

Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class QLearningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Id = Field(description="the stream whose latest window is scored")
    model: Id = Field(description="the model, loaded on this device and on the remote")
    remote: str = Field(description="coap://HOST[:PORT] of the box that takes offloaded requests")
    remote_model: Id | None = Field(None, description="the model's name on the remote [default: model]")
    window: Annotated[int, Field(ge=1, le=65_536)] = 128
    interval_s: Annotated[float, Field(ge=0.001, le=3600, allow_inf_nan=False)] = 0.05
    deadline_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)] = 20.0
    policy: Literal["learn", "local", "offload"] = "learn"
    alpha: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.2
    gamma: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.3
    epsilon: Fraction = Field(0.3, description="exploration at the start")
    epsilon_min: Fraction = 0.02
    epsilon_decay: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = Field(
        0.998, description="epsilon is multiplied by this at every decision, down to epsilon_min"
    )
    miss_penalty: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = 2.0
    queue_bins: Annotated[list[Annotated[int, Field(ge=0, le=1_000_000)]], Field(max_length=16)] = Field(
        [0, 2, 8], description="upper edges of the queue-depth bins (one more bin above the last)"
    )
    latency_bins: Annotated[
        list[Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]], Field(max_length=16)
    ] = Field([0.5, 1.0], description="upper edges of the latency bins, in deadlines")
    timeout_factor: Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)] = Field(
        10.0, description="an offloaded request unanswered after this many deadlines is given up"
    )
    report_s: Annotated[float, Field(ge=0.1, le=86_400, allow_inf_nan=False)] = 1.0
    output: Id = "offload-policy"

    @field_validator("remote")
    @classmethod
    def _coap_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "coap" or not parts.hostname:
            raise ValueError(f"remote {url!r} must be coap://HOST[:PORT]")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"remote {url!r} may only hold scheme, host and port")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"remote {url!r} has a bad port") from None
        return url.rstrip("/")

    @model_validator(mode="after")
    def _sane(self) -> QLearningConfig:
        for name in ("queue_bins", "latency_bins"):
            edges = getattr(self, name)
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"{name} must be increasing")
        if self.epsilon_min > self.epsilon:
            raise ValueError("epsilon_min must be at most epsilon")
        return self

    def bins_signature(self) -> list[JsonValue]:
        """What a saved Q table's states mean; a table saved under other bins is not reused."""
        return [list(self.queue_bins), list(self.latency_bins)]


def bin_of(value: float, edges: list[int] | list[float]) -> int:
    """The index of the first edge `value` does not pass; len(edges) above the last one."""
    for i, edge in enumerate(edges):
        if value <= edge:
            return i
    return len(edges)


@dataclass(slots=True)
class Learner:
    """A tabular Q-learner over (queue bin, local latency bin, remote latency bin) and two actions."""

    alpha: float
    gamma: float
    epsilon: float
    epsilon_min: float
    epsilon_decay: float
    table: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def values(self, state: str) -> list[float]:
        return self.table.get(state, [0.0, 0.0])

    def choose(self, state: str) -> int:
        """Epsilon-greedy; ties go to `local` (no network used for nothing)."""
        if self.rng.random() < self.epsilon:
            return self.rng.randrange(len(ACTIONS))
        q = self.values(state)
        return OFFLOAD if q[OFFLOAD] > q[LOCAL] else LOCAL

    def update(self, state: str, action: int, reward: float, next_state: str) -> None:
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward!r}")
        if state not in self.table and len(self.table) >= MAX_STATES:
            return
        q = self.table.setdefault(state, [0.0, 0.0])
        target = reward + self.gamma * max(self.values(next_state))
        q[action] += self.alpha * (target - q[action])
        self.steps += 1
        self.epsilon = max(self.epsilon_min, self.epsilon * self.epsilon_decay)

    def to_json(self, signature: list[JsonValue]) -> JsonValue:
        table: dict[str, JsonValue] = {state: [round(v, 6) for v in q] for state, q in self.table.items()}
        return {
            "v": TABLE_VERSION,
            "bins": signature,
            "steps": self.steps,
            "epsilon": self.epsilon,
            "table": table,
        }

    def restore(self, saved: JsonValue, signature: list[JsonValue]) -> bool:
        """Take up a table `to_json` saved; False (and nothing changed) if it is not one, or was saved
        under other bins."""
        parsed = parse_table(saved)
        if parsed is None or parsed[0] != signature:
            return False
        _, self.steps, epsilon, self.table = parsed
        self.epsilon = min(max(epsilon, self.epsilon_min), 1.0)
        return True


def parse_table(saved: object) -> tuple[object, int, float, dict[str, list[float]]] | None:
    """(bins, steps, epsilon, table) of a saved Q table, or None if `saved` is not a valid one."""
    if not isinstance(saved, Mapping) or saved.get("v") != TABLE_VERSION:
        return None
    steps, epsilon, table = saved.get("steps"), saved.get("epsilon"), saved.get("table")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        return None
    if not _finite(epsilon) or not isinstance(table, Mapping) or len(table) > MAX_STATES:
        return None
    parsed: dict[str, list[float]] = {}
    for state, q in table.items():
        if not isinstance(state, str) or not isinstance(q, list) or len(q) != len(ACTIONS):
            return None
        if not all(_finite(v) for v in q):
            return None
        parsed[state] = [float(v) for v in q]
    assert isinstance(epsilon, int | float)
    return saved.get("bins"), steps, float(epsilon), parsed


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(slots=True)
class Tally:
    """Cumulative counts since the agent started, and the latencies since the last report."""

    requests: int = 0
    local: int = 0
    offload: int = 0
    missed: int = 0
    missed_local: int = 0
    missed_offload: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, action: int, latency_s: float, missed: bool, error: bool) -> None:
        self.requests += 1
        self.latencies.append(latency_s)
        if action == LOCAL:
            self.local += 1
            self.missed_local += missed
        else:
            self.offload += 1
            self.missed_offload += missed
        self.missed += missed
        self.errors += error

    def report(self, learner: Learner) -> dict[str, float]:
        fields = {
            "requests": float(self.requests),
            "local": float(self.local),
            "offload": float(self.offload),
            "missed": float(self.missed),
            "missed_local": float(self.missed_local),
            "missed_offload": float(self.missed_offload),
            "errors": float(self.errors),
            "epsilon": round(learner.epsilon, 6),
            "steps": float(learner.steps),
        }
        if self.latencies:
            fields["latency_ms_mean"] = round(1000 * sum(self.latencies) / len(self.latencies), 4)
            fields["latency_ms_max"] = round(1000 * max(self.latencies), 4)
        self.latencies.clear()
        return fields


class QLearning(Agent):
    Config = QLearningConfig

    async def run(self, ctx: Context) -> None:
        config: QLearningConfig = ctx.config
        window: deque[float] = deque(maxlen=config.window)
        async with CoapClient(timeout=config.deadline_ms / 1000 * config.timeout_factor) as client:
            offload = _Offload(client, f"{config.remote}/infer/{config.remote_model or config.model}")
            samples = ctx.subscribe(config.source, depth=max(4 * config.window, 1024))
            filler = asyncio.create_task(_fill(samples, window))
            try:
                await _decide(ctx, config, window, offload)
            finally:
                filler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await filler


async def _fill(samples: Subscription[Sample], window: deque[float]) -> None:
    async for sample in samples:
        if isinstance(sample.value, float):
            window.append(sample.value)


class _Offload:
    def __init__(self, client: CoapClient, uri: str) -> None:
        self.client = client
        self.uri = uri

    async def infer(self, inputs: FloatArray) -> list[FloatArray]:
        payload = dumps({"inputs": [inputs.tolist()]}, Encoding.CBOR)
        response = await self.client.post(
            self.uri, payload, content_format=Encoding.CBOR, accept=Encoding.CBOR
        )
        data = response.data()
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if not isinstance(outputs, list):
            raise ProtocolError("bad-body", f"{self.uri} answered without outputs")
        return [np.asarray(out, dtype=np.float32) for out in outputs]


async def _decide(ctx: Context, config: QLearningConfig, window: deque[float], offload: _Offload) -> None:
    deadline_s = config.deadline_ms / 1000
    learner = Learner(config.alpha, config.gamma, config.epsilon, config.epsilon_min, config.epsilon_decay)
    signature = config.bins_signature()
    saved = ctx.state.get(STATE_KEY)
    if saved is not None and not learner.restore(saved, signature):
        ctx.log.warning("%s: the saved Q table does not fit these bins; learning afresh", ctx.agent)
    tally = Tally()
    saved_steps = learner.steps
    last = [0.0, 0.0]  # the last latency seen on each path, in deadlines
    pending: tuple[str, int, float] | None = None
    next_report = time.monotonic() + config.report_s
    async for _ in ctx.every(config.interval_s):
        if len(window) < config.window:
            continue
        stats = await ctx.kernel_stats()
        state = _state(config, stats.get("queue_depth", 0.0), last)
        if config.policy == "learn":
            if pending is not None:
                learner.update(pending[0], pending[1], pending[2], state)
            action = learner.choose(state)
        else:
            action = LOCAL if config.policy == "local" else OFFLOAD
        inputs = np.fromiter(window, dtype=np.float32, count=config.window).reshape(1, -1, 1)
        latency, error = await _run(ctx, config, action, inputs, offload)
        missed = error or latency > deadline_s
        last[action] = max(latency, deadline_s) / deadline_s if error else latency / deadline_s
        pending = (state, action, -last[action] - (config.miss_penalty if missed else 0.0))
        tally.add(action, latency, missed, error)
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + config.report_s
            if learner.steps != saved_steps:
                await ctx.state.set(STATE_KEY, learner.to_json(signature))
                saved_steps = learner.steps
            await ctx.publish(config.output, tally.report(learner))


def _state(config: QLearningConfig, queue_depth: float, last: list[float]) -> str:
    return (
        f"{bin_of(queue_depth, config.queue_bins)},"
        f"{bin_of(last[LOCAL], config.latency_bins)},{bin_of(last[OFFLOAD], config.latency_bins)}"
    )


async def _run(
    ctx: Context, config: QLearningConfig, action: int, inputs: FloatArray, offload: _Offload
) -> tuple[float, bool]:
    """(latency in seconds, whether it failed) of one inference on the chosen path."""
    start = time.perf_counter()
    try:
        if action == LOCAL:
            await ctx.infer(config.model, inputs, deadline_ms=config.deadline_ms)
        else:
            await offload.infer(inputs)
    except EdgeKernelError as err:  # refused, late, unreachable: a miss, and the next decision learns it
        ctx.log.debug("%s: %s inference failed: %s", ctx.agent, ACTIONS[action], err)
        return time.perf_counter() - start, True
    return time.perf_counter() - start, False
