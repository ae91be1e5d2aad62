"""The agent host with both isolations: the same agents, the same kernel calls, the same outcomes.
Process agents run as real child processes; the kernel's ports here are plain functions (the device
kernel's own wiring is tested in test_device_agents)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import JsonValue

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.host import AgentHost, Ports
from edgekernel.device.agents.lifecycle import Change
from edgekernel.device.drivers.errors import NotAnActuatorError
from edgekernel.protocol import Sample
from tests.agents.install import install

ISOLATIONS = ["inline", "process"]


@pytest.fixture
def agents_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(where))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))
    )
    return where


class Kernel:
    """What the host's ports reach: outputs kept in lists."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Sample]] = []
        self.events: list[tuple[str, JsonValue]] = []
        self.changes: list[Change] = []
        self.actuated: list[tuple[str, float]] = []

    async def infer(
        self, agent: str, model: str, inputs: list[Any], priority: int, deadline_s: float | None
    ) -> list[Any]:
        if model != "dense":
            raise KeyError(f"no model {model!r}")
        return [np.asarray(inputs[0], dtype=np.float32) * 2]

    async def publish(self, stream: str, samples: list[Sample], best_effort: bool) -> bool:
        self.published.extend((stream, s) for s in samples)
        return True

    async def event(self, event_type: str, agent: str, data: JsonValue) -> bool:
        self.events.append((event_type, {"agent": agent, "data": data}))
        return True

    async def actuate(self, stream: str, value: float) -> None:
        if not 0 <= value <= 1:
            raise NotAnActuatorError("sim", stream, f"stream {stream}: the fan duty must be between 0 and 1")
        self.actuated.append((stream, value))

    def on(self, stream: str) -> list[Sample]:
        return [s for name, s in self.published if name == stream]


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def host(tmp_path: Path, kernel: Kernel, agents_installed: Path) -> Iterator[AgentHost]:
    ports = Ports(kernel.infer, kernel.publish, kernel.event, frozenset({"in"}), actuate=kernel.actuate)
    made = AgentHost("dev", tmp_path / "data", ports, on_change=kernel.changes.append)
    yield made
    made.kill_now()  # a test that failed before closing its host leaves no agent process behind


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def spec(name: str, agent: str, isolation: str, **kwargs: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {"name": name, "agent": agent, "isolation": isolation, "backoff_first_s": 0.1, **kwargs}
    )


def state_of(host: AgentHost, name: str) -> str:
    return next(s.state for s in host.status() if s.name == name)


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_subscribe_publish_state_and_events(host: AgentHost, kernel: Kernel, isolation: str) -> None:
    await host.apply([spec("scaler", "scale", isolation, config={"gain": 3.0})])
    await until(lambda: state_of(host, "scaler") == "running" and kernel.events, "the agent running")
    await until(lambda: host.bus.subscribers("in") == 1, "its subscription")
    host.bus.publish("in", [Sample(ts=1_700_000_000.0 + i, value=float(i)) for i in range(50)])
    await until(lambda: len(kernel.on("scaled")) == 50, "50 scaled samples")
    assert [s.value for s in kernel.on("scaled")] == [3.0 * i for i in range(50)]
    assert kernel.on("scaled")[0].ts == 1_700_000_000.0
    assert kernel.events[0] == (
        "started",
        {"agent": "scaler", "data": {"runs": 1, "pid": kernel.events[0][1]["data"]["pid"]}},
    )  # type: ignore[index,call-overload]
    pid = kernel.events[0][1]["data"]["pid"]  # type: ignore[index,call-overload]
    assert (pid == os.getpid()) is (isolation == "inline")
    await host.close()
    assert host.states.path.exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_actuate_reaches_the_stream_and_a_refusal_reaches_the_agent(
    host: AgentHost, kernel: Kernel, isolation: str
) -> None:
    await host.apply([spec("fan-control", "actuate", isolation)])
    await until(lambda: any(t == "refused" for t, _ in kernel.events), "the refusal")
    assert kernel.actuated == [("fan", 0.75)]
    [(_, body)] = [e for e in kernel.events if e[0] == "refused"]
    assert "between 0 and 1" in str(body)
    assert host.usage()["fan-control"]["actuated"] == 1
    await host.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_infer_goes_through_the_kernel(host: AgentHost, kernel: Kernel, isolation: str) -> None:
    await host.apply([spec("inferrer", "infer", isolation)])
    await until(lambda: len(kernel.on("inferred")) >= 3, "three inferences")
    assert kernel.on("inferred")[0].value == 8.0
    await host.apply([spec("inferrer", "infer", isolation, config={"model": "missing"})])
    await until(lambda: state_of(host, "inferrer") in ("backoff", "failed", "broken"), "a failure")
    assert "missing" in next(s.last_error for s in host.status())
    await host.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_crashing_agent_is_restarted_then_broken_and_others_go_on(
    host: AgentHost, kernel: Kernel, isolation: str
) -> None:
    await host.apply(
        [spec("crasher", "crash", isolation, max_failures=3), spec("scaler", "scale", isolation)]
    )
    await until(lambda: state_of(host, "crasher") == "broken", "the crasher broken")
    crasher = next(s for s in host.status() if s.name == "crasher")
    assert crasher.failures == 3
    assert "crashed on purpose" in crasher.last_error
    assert len(kernel.on("crash-runs")) == 3
    await until(lambda: host.bus.subscribers("in") == 1, "the scaler subscribed")
    host.bus.publish("in", [Sample(ts=1_700_000_000.0, value=1.0)])
    await until(lambda: len(kernel.on("scaled")) == 1, "the scaler still working")
    assert host.restart("crasher")
    await until(lambda: len(kernel.on("crash-runs")) == 4, "a run after the restart")
    await host.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_flooding_agent_hits_its_quota(host: AgentHost, kernel: Kernel, isolation: str) -> None:
    started = time.monotonic()
    await host.apply([spec("flooder", "flood", isolation, quotas={"publish_rate": 20})])
    await until(lambda: host.usage()["flooder"].get("publish_refused:rate", 0) > 100, "refusals")
    await asyncio.sleep(1.0)
    accepted = len(kernel.on("flood"))
    assert accepted <= 40 + 20 * (time.monotonic() - started) + 1  # a 2 s burst, then 20/s
    assert state_of(host, "flooder") == "running"
    await host.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_stop_that_does_not_finish_is_counted(
    host: AgentHost, kernel: Kernel, isolation: str
) -> None:
    await host.apply([spec("stubborn", "stubborn", isolation, stop_timeout_s=0.5)])
    await until(lambda: state_of(host, "stubborn") == "running", "running")
    await asyncio.sleep(0.5 if isolation == "inline" else 3.0)  # the child is past its imports
    await host.apply([])
    assert host.supervisor.killed["stubborn"] == 1
    await host.close()


async def test_a_process_agent_that_blocks_its_loop_is_killed_as_hung(
    host: AgentHost, kernel: Kernel
) -> None:
    await host.apply([spec("spinner", "spin", "process", heartbeat_timeout_s=2, max_failures=2)])
    await until(lambda: state_of(host, "spinner") == "broken", "broken after two hangs", timeout=120)
    status = next(s for s in host.status() if s.name == "spinner")
    assert "hung: no heartbeat" in status.last_error
    await host.close()


async def test_a_process_agent_that_leaks_is_stopped_at_its_memory_limit(
    host: AgentHost, kernel: Kernel
) -> None:
    await host.apply([spec("leaker", "leak", "process", quotas={"memory_mb": 200}, max_failures=2)])
    await until(lambda: state_of(host, "leaker") == "broken", "broken after two leaks", timeout=120)
    status = next(s for s in host.status() if s.name == "leaker")
    assert "MemoryError" in status.last_error or "SIGKILL" in status.last_error
    await host.close()


async def test_a_bad_config_is_broken_at_once_in_a_process_too(host: AgentHost) -> None:
    await host.apply([spec("scaler", "scale", "process", config={"gain": "lots"})])
    await until(lambda: state_of(host, "scaler") == "broken", "broken")
    assert "gain" in host.status()[0].last_error
    await host.close()
