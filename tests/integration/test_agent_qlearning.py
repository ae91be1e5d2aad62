"""The `qlearning` agent in a real device kernel: it scores windows of the vibration stream with the
project's model both locally and by CoAP ``POST /infer`` on a second device process, reports its
counts as telemetry, and keeps its Q table in its agent state across a kernel restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgekernel.device.agents.store import StateStore
from edgekernel.device.kernel import Kernel
from edgekernel.link import Mosquitto
from edgekernel.protocol import TelemetryBody, decode, topics

from .coap_device import coap_device
from .helpers import Collector
from .test_device_agents import FLEET, device_config

pytestmark = pytest.mark.integration


def reports(seen: Collector, since: float) -> list[dict[str, float]]:
    """The agent's reports made after `since` (a restarted device also resends, with no gateway to
    acknowledge them, those of its last run)."""
    found = []
    for message in seen.on(topics.telemetry(FLEET, "dev-1", "offload-policy")):
        sample = TelemetryBody.from_envelope(decode(message.payload)).samples[0]
        assert isinstance(sample.value, dict)
        if sample.ts >= since:
            found.append(sample.value)
    return found


def test_qlearning_tries_both_paths_and_keeps_its_table_across_a_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "neighbour").mkdir()
    with coap_device(broker, tmp_path / "neighbour") as remote:
        agent = {
            "name": "offload",
            "agent": "qlearning",
            "config": {
                "source": "vibration",
                "model": "vibration-anomaly",
                "remote": remote,
                "interval_s": 0.02,
                "deadline_ms": 1000,
                "epsilon": 0.5,
                "report_s": 0.3,
            },
        }

        async def run_until(predicate_steps: int) -> list[dict[str, float]]:
            since = time.time()
            kernel = Kernel(device_config(broker, tmp_path, [agent]))
            stop = asyncio.Event()
            async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/offload-policy") as seen:
                task = asyncio.create_task(kernel.run(stop))
                await seen.wait_for(
                    lambda _: any(r["steps"] >= predicate_steps for r in reports(seen, since)),
                    what=f"{predicate_steps} learning steps",
                )
                stop.set()
                await task
                return reports(seen, since)

        first = asyncio.run(run_until(40))
        last = first[-1]
        assert last["local"] > 0
        assert last["offload"] > 0  # the remote answered: offloaded requests that did not fail
        assert last["errors"] < last["requests"]
        assert last["missed"] <= last["requests"]

        store = StateStore(tmp_path / "dev-1" / "agents.db")
        saved = store.load("offload")["qtable"]
        store.close()
        assert isinstance(saved, dict)
        assert isinstance(saved["steps"], int)
        assert saved["steps"] >= 1

        again = asyncio.run(run_until(saved["steps"] + 10))
        assert again[0]["steps"] >= saved["steps"]  # took up where the saved table left off
