"""The device kernel: birth and will, reported capabilities, telemetry with a seq that survives restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig
from edgekernel.config.kernel import KernelConfig, ModelSpec
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, SimSignal
from edgekernel.device.kernel import Kernel
from edgekernel.link import Message, Mosquitto, MqttSession
from edgekernel.protocol import ReportedBody, StatusBody, TelemetryBody, decode, encode, topics
from edgekernel.protocol.bodies import AckBody
from tools.datasets import split

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"


def device_config(broker: Mosquitto, tmp_path: Path, **extra: object) -> DeviceConfig:
    return DeviceConfig(
        fleet=FLEET,
        device="dev-1",
        broker=BrokerConfig(url=broker.url, reconnect=ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)),
        data_dir=tmp_path / "dev-1",
        labels={"site": "lab"},
        sensors=[
            SensorConfig(
                stream="vibration",
                rate_hz=200,
                batch=BatchConfig(max_samples=20, max_wait_ms=200),
                sim=SimSignal(kind="vibration", seed=1),
            ),
            SensorConfig(
                stream="temp", rate_hz=5, batch=BatchConfig(max_samples=1, max_wait_ms=0), best_effort=True
            ),
        ],
        **extra,  # type: ignore[arg-type]
    )


async def run_for(kernel: Kernel, seconds: float, seen: Collector) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(kernel.run(stop))
    await seen.wait_for(lambda ms: any(m.topic.endswith("/telemetry/temp") for m in ms))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    await seen.wait_for(lambda ms: any(not s.online for s in statuses(ms)), what="offline status")


def telemetry_seqs(messages: list[Message]) -> list[int]:
    """The seqs of the durable telemetry (`vibration`), all in one seq space; the best-effort stream
    (`temp`, QoS 0, never kept) has none."""
    seqs, epochs = [], set()
    for message in messages:
        if "/telemetry/" in message.topic:
            envelope = decode(message.payload)
            TelemetryBody.from_envelope(envelope)
            if message.topic.endswith("/temp"):
                assert (envelope.seq, envelope.epoch) == (None, None)
                continue
            assert envelope.seq is not None
            assert envelope.epoch is not None
            seqs.append(envelope.seq)
            epochs.add(envelope.epoch)
    assert len(epochs) <= 1
    return seqs


def statuses(messages: list[Message]) -> list[StatusBody]:
    return [StatusBody.from_envelope(decode(m.payload)) for m in messages if m.topic.endswith("/status")]


def test_device_announces_itself_reports_and_publishes_batched_telemetry(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Collector(broker.url, f"ek/v1/{FLEET}/#") as seen:
            await run_for(Kernel(device_config(broker, tmp_path)), 1.0, seen)
            first, last = statuses(seen.messages)[0], statuses(seen.messages)[-1]
            assert first.online
            assert not last.online
            assert first.boot == last.boot == 1
            [reported] = [m for m in seen.messages if m.topic == topics.reported(FLEET, "dev-1")]
            body = ReportedBody.from_envelope(decode(reported.payload))
            assert body.capabilities.cores >= 1
            assert "CPUExecutionProvider" in body.capabilities.onnx_providers
            assert body.streams == ["vibration", "temp"]
            assert body.labels == {"site": "lab"}
            seqs = telemetry_seqs(seen.messages)
            assert seqs == list(range(1, len(seqs) + 1))
            assert any(m.topic.endswith("/telemetry/temp") for m in seen.messages)
            vib = [decode(m.payload) for m in seen.on(topics.telemetry(FLEET, "dev-1", "vibration"))]
            assert all(len(TelemetryBody.from_envelope(e).samples) <= 20 for e in vib)
            assert sum(len(TelemetryBody.from_envelope(e).samples) for e in vib) >= 150

    asyncio.run(scenario())


def test_seq_and_boot_survive_a_restart(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Collector(broker.url, f"ek/v1/{FLEET}/#") as seen:
            await run_for(Kernel(device_config(broker, tmp_path)), 0.3, seen)
            before = telemetry_seqs(seen.messages)
            before_messages = list(seen.messages)
            seen.messages.clear()
            await run_for(Kernel(device_config(broker, tmp_path)), 0.3, seen)
            after = telemetry_seqs(seen.messages + before_messages)  # one seq space across the restart
            after = telemetry_seqs(seen.messages)
            new = [seq for seq in after if seq > max(before)]
            assert new == list(range(max(before) + 1, max(before) + 1 + len(new)))
            assert set(before) <= set(after)  # no gateway acknowledged them: sent again
            assert statuses(seen.messages)[0].boot == 2

    asyncio.run(scenario())


def test_device_refuses_bad_messages_on_its_topics_and_keeps_running(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        kernel = Kernel(device_config(broker, tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_connected(10)
        logs = Collector(broker.url, topics.log(FLEET, "dev-1"), client_id="logs")
        async with (
            logs,
            MqttSession(BrokerConfig(url=broker.url), client_id="evil", persistent=False) as evil,
        ):
            await evil.wait_connected(10)
            await evil.publish(topics.desired(FLEET, "dev-1"), b"\xff\x00garbage", qos=1)
            await evil.publish(topics.cmd(FLEET, "dev-1", "reboot"), b"{}", qos=1)
            await evil.publish(topics.ack(FLEET, "dev-1"), b"x" * 300_000, qos=1)
            await logs.wait_for(lambda ms: len(ms) == 3, what="three log lines")
        await wait_until(lambda: sum(v for k, v in kernel.counters.items() if k.startswith("rejected:")) == 3)
        assert kernel.counters["rejected:bad-cbor"] == 1
        assert kernel.counters["rejected:bad-envelope"] == 1
        assert kernel.counters["rejected:oversized"] == 1
        lines = [decode(m.payload) for m in logs.messages]
        assert len(lines) == 3
        assert all(e.type == "log" for e in lines)
        assert all(e.body["level"] == "warning" for e in lines)
        assert "oversized" in str(lines[-1].body["message"])
        sent = kernel.counters["telemetry_sent"]
        await wait_until(lambda: kernel.counters["telemetry_sent"] > sent + 2, what="telemetry keeps flowing")
        stop.set()
        await task

    asyncio.run(scenario())


def test_device_rides_out_a_broker_outage_longer_than_its_report_interval(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        kernel = Kernel(device_config(broker, tmp_path, reported_interval_s=0.5))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_connected(10)
        broker.stop()
        await asyncio.sleep(2.0)
        assert not task.done()
        broker.start()
        async with Collector(broker.url, f"ek/v1/{FLEET}/#") as seen:
            await seen.wait_for(
                lambda ms: (
                    any(m.topic.endswith("/reported") for m in ms)
                    and any("/telemetry/" in m.topic for m in ms)
                ),
                what="reported and telemetry after the outage",
            )
        assert kernel.session.stats.connects == 2
        stop.set()
        await task

    asyncio.run(scenario())


def test_kernel_serves_its_models_and_reports_them(broker: Mosquitto, tmp_path: Path) -> None:
    models = Path(__file__).resolve().parents[2] / "models"
    manifest = {m["file"]: m for m in json.loads((models / "manifest.json").read_text())["models"]}
    kernel_cfg = KernelConfig(
        models=[
            ModelSpec(
                name="vibration",
                version="3",
                file=models / "vibration_cnn.int8.onnx",
                sha256=manifest["vibration_cnn.int8.onnx"]["sha256"],
                runtime="onnx",
                memory_mb=8,
            )
        ]
    )

    async def scenario() -> None:
        kernel = Kernel(device_config(broker, tmp_path, kernel=kernel_cfg))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_connected(10)
        x, _ = split("vibration", "test", n=4)
        [probs] = await kernel.infer("monitor", "vibration", [x])
        assert probs.shape == (4, 2)
        async with Collector(broker.url, topics.reported(FLEET, "dev-1")) as seen:
            kernel.publish_reported()
            await seen.wait_for(lambda ms: len(ms) >= 2, what="reported")
            body = ReportedBody.from_envelope(decode(seen.messages[-1].payload))
        [state] = body.models
        assert (state.name, state.version, state.device, state.loaded) == (
            "vibration",
            "3",
            "CPUExecutionProvider",
            True,
        )
        assert body.inference is not None
        assert body.inference.completed == 1
        assert body.backlog is not None
        assert body.backlog.dropped == 0
        stop.set()
        await task

    asyncio.run(scenario())


def test_an_ack_for_another_seq_space_frees_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        kernel = Kernel(device_config(broker, tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_connected(10)
        await wait_until(lambda: kernel.outbox.stats().pending >= 3, what="three messages held")
        stats = kernel.outbox.stats()
        assert stats.epoch == kernel.outbox.epoch != 0
        everything = [[1, 10**6]]
        async with MqttSession(BrokerConfig(url=broker.url), client_id="gw", persistent=False) as gw:
            await gw.wait_connected(10)
            old_space = AckBody(ranges=everything).to_envelope("gw")  # epoch 0: not this outbox's
            await gw.publish(topics.ack(FLEET, "dev-1"), encode(old_space), qos=1)
            await wait_until(lambda: kernel.counters["ack_other_epoch"] == 1, what="the ack refused")
            assert kernel.outbox.stats().acked == 0
            own = AckBody(ranges=everything, epoch=kernel.outbox.epoch).to_envelope("gw")
            await gw.publish(topics.ack(FLEET, "dev-1"), encode(own), qos=1)
            await wait_until(lambda: kernel.outbox.stats().acked >= 3, what="the ack applied")
        stop.set()
        await task

    asyncio.run(scenario())
