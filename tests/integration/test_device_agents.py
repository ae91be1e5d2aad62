"""Agents in a real device kernel, with a real Mosquitto, a real gateway and the project's ONNX model:
the pipeline agent scores the vibration stream and raises anomaly events that a subscriber sees and
the gateway stores and acknowledges; agents come and go with …/desired while the kernel runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.agents import AgentSpec
from edgekernel.config.kernel import KernelConfig, ModelSpec
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, SimSignal, StoreConfig
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, MqttSession
from edgekernel.protocol import EventBody, ReportedBody, TelemetryBody, decode, encode, topics
from edgekernel.protocol.envelope import Envelope
from tests.stores import rows
from tests.waiting import DEADLINE_S

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
MODELS = Path(__file__).resolve().parents[2] / "models"
VIBRATION_SHA = json.loads((MODELS / "manifest.json").read_text())


def _sha(name: str) -> str:
    return next(m["sha256"] for m in VIBRATION_SHA["models"] if m["file"] == name)


def device_config(broker: Mosquitto, tmp_path: Path, agents: list[dict[str, Any]]) -> DeviceConfig:
    return DeviceConfig(
        fleet=FLEET,
        device="dev-1",
        broker=BrokerConfig(url=broker.url, reconnect=FAST),
        data_dir=tmp_path / "dev-1",
        outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
        reported_interval_s=0.5,
        sensors=[
            SensorConfig(
                stream="vibration",
                rate_hz=500,
                batch=BatchConfig(max_samples=50, max_wait_ms=200),
                sim=SimSignal(kind="vibration", seed=3, amplitude=0.5, frequency_hz=40),
            )
        ],
        kernel=KernelConfig(
            models=[
                ModelSpec(
                    name="vibration-anomaly",
                    file=MODELS / "vibration_cnn.int8.onnx",
                    sha256=_sha("vibration_cnn.int8.onnx"),
                    runtime="onnx",
                    memory_mb=4,
                )
            ]
        ),
        agents=[AgentSpec.model_validate(a) for a in agents],
    )


def gateway(broker: Mosquitto, tmp_path: Path) -> Gateway:
    return Gateway(
        GatewayConfig(
            fleet=FLEET,
            gateway="gw-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
        )
    )


def events(seen: Collector, event_type: str) -> list[tuple[Envelope, EventBody]]:
    found = []
    for message in seen.on(topics.events(FLEET, "dev-1", event_type)):
        envelope = decode(message.payload)
        found.append((envelope, EventBody.from_envelope(envelope)))
    return found


PIPELINE = {
    "name": "vibration-watch",
    "agent": "pipeline",
    # on 0: the first window raises the alarm (what the model says of the sim is the demo's business)
    "config": {
        "source": "vibration",
        "model": "vibration-anomaly",
        "window": 128,
        "hop": 64,
        "on": 0.0,
        "off": -1.0,
    },
}


def test_the_pipeline_agent_scores_a_stream_and_raises_durable_events(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        kernel = Kernel(
            device_config(
                broker,
                tmp_path,
                [PIPELINE, {"name": "health", "agent": "monitor", "config": {"interval_s": 0.2}}],
            )
        )
        gw = gateway(broker, tmp_path)
        stop_device, stop_gateway = asyncio.Event(), asyncio.Event()
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/#") as seen:
            gw_task = asyncio.create_task(gw.run(stop_gateway))
            dev_task = asyncio.create_task(kernel.run(stop_device))
            await seen.wait_for(lambda _: len(events(seen, "anomaly")) >= 1, what="an anomaly event")
            await seen.wait_for(
                lambda ms: len(seen.on(topics.telemetry(FLEET, "dev-1", "anomaly-score"))) >= 3, what="scores"
            )
            await seen.wait_for(
                lambda ms: seen.on(topics.telemetry(FLEET, "dev-1", "system")) != [], what="system"
            )
            [(envelope, anomaly)] = events(seen, "anomaly")
            assert anomaly.agent == "vibration-watch"
            assert isinstance(anomaly.data, dict)
            assert anomaly.data["state"] == "raised"
            assert envelope.seq is not None  # durable: through the outbox
            score = TelemetryBody.from_envelope(
                decode(seen.on(topics.telemetry(FLEET, "dev-1", "anomaly-score"))[0].payload)
            )
            assert 0.0 <= score.samples[0].value <= 1.0  # type: ignore[operator]
            system = TelemetryBody.from_envelope(
                decode(seen.on(topics.telemetry(FLEET, "dev-1", "system"))[-1].payload)
            )
            assert isinstance(system.samples[0].value, dict)
            assert "queue_depth" in system.samples[0].value
            states = [
                (e.agent, e.data["state"]) for _, e in events(seen, "agent") if isinstance(e.data, dict)
            ]
            assert ("vibration-watch", "running") in states
            assert ("health", "running") in states
            await seen.wait_for(
                lambda ms: any(
                    ReportedBody.from_envelope(decode(m.payload)).agents
                    for m in seen.on(topics.reported(FLEET, "dev-1"))
                ),
                what="agents on reported",
            )
            store = tmp_path / "store.db"
            await wait_until(
                lambda: rows(store, "SELECT type FROM events WHERE type = 'anomaly'"), what="stored event"
            )
            stop_device.set()
            await dev_task
            stop_gateway.set()
            await gw_task
        [(body,)] = rows(store, "SELECT body FROM events WHERE type = 'anomaly'")
        assert json.loads(body)["agent"] == "vibration-watch"

    asyncio.run(scenario())


def test_desired_adds_reconfigures_and_removes_agents_while_the_kernel_runs(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        kernel = Kernel(device_config(broker, tmp_path, []))
        stop = asyncio.Event()
        fleet = MqttSession(BrokerConfig(url=broker.url, reconnect=FAST), client_id="fleet")
        fleet.start()
        await fleet.wait_connected(DEADLINE_S)

        async def desire(generation: int, agents: list[dict[str, Any]]) -> None:
            envelope = Envelope.new(
                src="fleet", type="desired", body={"generation": generation, "agents": agents}
            )
            await fleet.publish(topics.desired(FLEET, "dev-1"), encode(envelope), qos=1, retain=True)

        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/#") as seen:
            task = asyncio.create_task(kernel.run(stop))
            await kernel.session.wait_connected(DEADLINE_S)
            await desire(1, [{"name": "health", "agent": "monitor", "config": {"interval_s": 0.2}}])
            await seen.wait_for(lambda _: seen.on(topics.telemetry(FLEET, "dev-1", "system")), what="system")
            await desire(
                2, [{"name": "health", "agent": "monitor", "config": {"interval_s": 0.2, "output": "box"}}]
            )
            await seen.wait_for(lambda _: seen.on(topics.telemetry(FLEET, "dev-1", "box")), what="box")
            await desire(3, [])
            await wait_until(
                lambda: kernel.desired_generation == 3 and kernel.agents.supervisor.names == [],
                what="generation 3 applied",
            )

            def stopped() -> int:
                changes = [(e.agent, e.data) for _, e in events(seen, "agent") if isinstance(e.data, dict)]
                return sum(
                    1 for agent, data in changes if agent == "health" and data.get("state") == "stopped"
                )

            # once for the new config of generation 2, once for its removal in 3
            await seen.wait_for(lambda _: stopped() == 2, what="health stopped twice")
            await desire(4, [{"name": "x", "agent": "monitor", "config": {"interval_s": "soon"}}])
            await wait_until(
                lambda: kernel.agents.status() and kernel.agents.status()[0].state == "broken", what="broken"
            )
            assert "interval_s" in kernel.agents.status()[0].last_error
            stop.set()
            await task
        await fleet.close()

    asyncio.run(scenario())
