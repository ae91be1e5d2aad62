"""The supervisor with inline agents: restarts by policy, broken after repeated failures, cleared by
a restart, a stop that does not finish, and a new list of agents applied without touching the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.bus import Bus, Subscription
from edgekernel.device.agents.context import Context, FloatArray
from edgekernel.device.agents.errors import AgentNotFoundError
from edgekernel.device.agents.inline import InlineExecution
from edgekernel.device.agents.lifecycle import AgentState, Change
from edgekernel.device.agents.store import StateStore
from edgekernel.device.agents.supervisor import Supervisor
from edgekernel.protocol import Sample


class Calls:
    def __init__(self, states: StateStore) -> None:
        self.bus: Bus[Sample] = Bus()
        self.published: list[tuple[str, str, list[Sample]]] = []
        self.states = states

    async def infer(
        self, agent: str, model: str, inputs: list[FloatArray], priority: int, deadline_s: float | None
    ) -> list[FloatArray]:
        return inputs

    async def publish(self, agent: str, stream: str, samples: list[Sample], best_effort: bool) -> None:
        self.published.append((agent, stream, samples))
        self.bus.publish(stream, samples)

    async def event(self, agent: str, event_type: str, body: JsonValue) -> None:
        pass

    def subscribe(self, agent: str, stream: str, depth: int) -> Subscription[Sample]:
        return self.bus.subscribe(stream, agent, depth)

    async def state_set(self, agent: str, key: str, value: JsonValue) -> None:
        self.states.put(agent, key, value)

    async def state_delete(self, agent: str, key: str) -> None:
        self.states.delete(agent, key)

    async def heartbeat(self, agent: str) -> None:
        pass

    async def kernel_stats(self, agent: str) -> dict[str, float]:
        return {}


class Counter:
    runs = 0

    class Config(BaseModel):
        fail: bool = False

    async def run(self, ctx: Context) -> None:
        type(self).runs += 1
        count = ctx.state.get("count", 0)
        assert isinstance(count, int)
        await ctx.state.set("count", count + 1)
        await ctx.publish("count", count + 1)
        if ctx.config.fail:
            raise RuntimeError("told to fail")
        await asyncio.sleep(3600)


class Returns:
    async def run(self, ctx: Context) -> None:
        return None


class Stubborn:
    async def run(self, ctx: Context) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if Stubborn.released:
                    raise

    released = False


KINDS: dict[str, type[Any]] = {"counter": Counter, "returns": Returns, "stubborn": Stubborn}


def _load(kind: str) -> type[Any]:
    try:
        return KINDS[kind]
    except KeyError:
        raise AgentNotFoundError(kind, f"no agent {kind!r}") from None


@pytest.fixture
def states(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "agents.db")
    yield store  # type: ignore[misc]
    store.close()


def _supervisor(states: StateStore) -> tuple[Supervisor, Calls, list[Change]]:
    calls = Calls(states)
    changes: list[Change] = []

    def factory(spec: AgentSpec) -> InlineExecution:
        return InlineExecution(spec, device="dev", calls=calls, states=states, load=_load)

    return Supervisor(factory, on_change=changes.append), calls, changes


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _spec(name: str, agent: str, **kwargs: Any) -> AgentSpec:
    return AgentSpec.model_validate({"name": name, "agent": agent, "backoff_first_s": 0.05, **kwargs})


def _state(sup: Supervisor, name: str) -> str:
    return next(s.state for s in sup.status() if s.name == name)


async def test_a_failing_agent_restarts_with_backoff_then_is_broken_then_cleared(states: StateStore) -> None:
    sup, _calls, changes = _supervisor(states)
    await sup.apply([_spec("c", "counter", config={"fail": True}, max_failures=3)])
    await _until(lambda: _state(sup, "c") == "broken", "broken")
    status = sup.status()[0]
    assert status.failures == 3
    assert status.restarts == 2
    assert status.last_error == "RuntimeError: told to fail"
    assert states.load("c") == {"count": 3}  # state kept across restarts
    sup.restart("c")
    await _until(lambda: states.load("c") == {"count": 4}, "a run after the restart")
    await sup.close()
    assert AgentState.BACKOFF in {c.new for c in changes}


async def test_apply_reconfigures_only_what_changed(states: StateStore) -> None:
    sup, calls, _ = _supervisor(states)
    await sup.apply([_spec("a", "counter"), _spec("b", "counter")])
    await _until(lambda: len(calls.published) == 2, "both running")
    await _until(lambda: {s.state for s in sup.status()} == {"running"}, "running")
    await sup.apply([_spec("a", "counter"), _spec("c", "counter")])
    await _until(lambda: len(calls.published) == 3, "c running")
    assert sorted(sup.names) == ["a", "c"]
    assert [p[0] for p in calls.published] == ["a", "b", "c"] or [p[0] for p in calls.published] == [
        "b",
        "a",
        "c",
    ]
    await sup.apply([_spec("a", "counter", restart="always"), _spec("c", "counter")])
    await _until(lambda: len(calls.published) == 4, "a restarted with its new spec")
    assert calls.published[-1][0] == "a"
    await sup.close()


async def test_policies_on_a_clean_return(states: StateStore) -> None:
    sup, _calls, changes = _supervisor(states)
    await sup.apply([_spec("once", "returns"), _spec("loop", "returns", restart="always")])
    await _until(
        lambda: sum(1 for c in changes if c.agent == "loop" and c.new == "backoff") >= 3, "loop restarts"
    )
    assert _state(sup, "once") == "stopped"
    await sup.close()


async def test_a_stop_that_never_finishes_is_counted(states: StateStore) -> None:
    sup, _, _ = _supervisor(states)
    await sup.apply([_spec("s", "stubborn", stop_timeout_s=0.2)])
    await _until(lambda: _state(sup, "s") == "running", "running")
    await sup.apply([])
    assert sup.killed["s"] == 1
    assert sup.names == []
    Stubborn.released = True  # lets the loop's own shutdown end it


async def test_an_unknown_agent_is_retried_and_a_bad_config_is_broken_at_once(states: StateStore) -> None:
    sup, _, _ = _supervisor(states)
    await sup.apply([_spec("x", "missing", max_failures=2), _spec("y", "counter", config={"fail": "maybe"})])
    await _until(lambda: _state(sup, "x") == "broken", "x broken")
    y = next(s for s in sup.status() if s.name == "y")
    assert y.state == "broken"
    assert "fail" in y.last_error
    await sup.close()
