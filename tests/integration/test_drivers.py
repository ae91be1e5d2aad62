"""Drivers in a real device kernel with a real Mosquitto: a replayed CSV reaches the gateway's store; an
mqtt sensor reads another program's topic; a coap sensor observes another device's telemetry and
registers again after that device restarts; `…/desired` adds, reconfigures and removes a sensor while
the kernel runs; a signed inject-anomaly command puts a fault into a sim stream."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import (
    BatchConfig,
    DeviceCoapConfig,
    ReconnectConfig,
    SensorConfig,
    SimSignal,
    StoreConfig,
)
from edgekernel.device.drivers.coap import CoapSource
from edgekernel.device.drivers.mqtt import MqttSource
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, MqttSession
from edgekernel.protocol import Envelope, FleetKey, TelemetryBody, decode, encode, sign_command, topics
from tests.stores import rows
from tests.waiting import DEADLINE_S

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
QUICK = BatchConfig(max_samples=10, max_wait_ms=100)


def config(
    broker: Mosquitto, tmp_path: Path, device: str, sensors: list[SensorConfig], **extra: Any
) -> DeviceConfig:
    return DeviceConfig(
        fleet=FLEET,
        device=device,
        broker=BrokerConfig(url=broker.url, reconnect=FAST),
        data_dir=tmp_path / device,
        outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
        reported_interval_s=0.5,
        sensors=sensors,
        **extra,
    )


def values(seen: Collector, device: str, stream: str) -> list[Any]:
    return [
        sample.value
        for message in seen.on(topics.telemetry(FLEET, device, stream))
        for sample in TelemetryBody.from_envelope(decode(message.payload)).samples
    ]


def test_a_replayed_csv_reaches_the_gateway(broker: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "recorded.csv").write_text(
        "timestamp,x,y\n" + "".join(f"{1000 + i * 0.01:.2f},{i},{-i}\n" for i in range(30))
    )
    replay = SensorConfig.model_validate(
        {
            "stream": "rec",
            "driver": "replay",
            "batch": QUICK.model_dump(),
            "config": {"file": "recorded.csv", "speed": 4},
        },
        context={"base_dir": tmp_path},
    )

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [replay]))
        gw = Gateway(
            GatewayConfig(
                fleet=FLEET,
                gateway="gw-1",
                broker=BrokerConfig(url=broker.url, reconnect=FAST),
                store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
            )
        )
        stop_device, stop_gateway = asyncio.Event(), asyncio.Event()
        gw_task = asyncio.create_task(gw.run(stop_gateway))
        dev_task = asyncio.create_task(kernel.run(stop_device))
        store = tmp_path / "store.db"
        await wait_until(
            lambda: (
                rows(store, "SELECT count(*) FROM samples WHERE stream = 'rec'")[0][0] >= 30
                if store.exists()
                else False
            ),
            what="30 stored samples",
        )
        stop_device.set()
        await dev_task
        stop_gateway.set()
        await gw_task

    asyncio.run(scenario())
    stored = rows(tmp_path / "store.db", "SELECT fields FROM samples WHERE stream = 'rec' ORDER BY ts")
    assert [json.loads(v) for (v,) in stored][:2] == [
        {"x": 0.0, "y": 0.0},
        {"x": 1.0, "y": -1.0},
    ]


def test_the_mqtt_driver_reads_a_topic_and_counts_bad_payloads(broker: Mosquitto, tmp_path: Path) -> None:
    vendor = SensorConfig.model_validate(
        {
            "stream": "vendor-temp",
            "driver": "mqtt",
            "batch": QUICK.model_dump(),
            "config": {"broker": {"url": broker.url}, "topic": "acme/+/reading", "path": "$.data.celsius"},
        }
    )

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [vendor]))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        acme = MqttSession(BrokerConfig(url=broker.url), client_id="acme", persistent=False)
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/#") as seen, acme:
            await wait_until(lambda: kernel.sensors.streams, what="the sensor")
            source = kernel.sensors.streams[0].source
            assert isinstance(source, MqttSource)
            sent = 0
            while not values(seen, "dev-1", "vendor-temp"):  # until the driver's subscription is in place
                await acme.publish("acme/s1/reading", b'{"data": {"celsius": 21.5}}', qos=1)
                sent += 1
                await asyncio.sleep(0.2)
                assert sent < DEADLINE_S * 5, "the driver never passed a reading on"
            await acme.publish("acme/s1/reading", b"not json", qos=1)
            await acme.publish("acme/s2/reading", b'{"data": {"celsius": 22.25}}', qos=1)
            await seen.wait_for(lambda _: 22.25 in values(seen, "dev-1", "vendor-temp"), what="22.25")
            assert source.bad_payloads == 1
            assert set(values(seen, "dev-1", "vendor-temp")) == {21.5, 22.25}
        stop.set()
        await task

    asyncio.run(scenario())


def test_the_coap_driver_observes_another_device_and_registers_again(
    broker: Mosquitto, tmp_path: Path
) -> None:
    temp = SensorConfig(
        stream="temp", rate_hz=20, batch=QUICK, sim=SimSignal(kind="sine", offset=50, amplitude=1)
    )
    coap = DeviceCoapConfig(host="127.0.0.1", port=0)

    async def scenario() -> None:
        source_stop = asyncio.Event()
        first = Kernel(config(broker, tmp_path, "dev-a", [temp], coap=coap))
        source_task = asyncio.create_task(first.run(source_stop))
        await wait_until(lambda: first.session.connected, what="dev-a online (its CoAP server bound)")
        assert first.coap is not None
        url = first.coap.url
        port = int(url.rsplit(":", 1)[1].strip("/"))
        observer = SensorConfig.model_validate(
            {
                "stream": "remote-temp",
                "driver": "coap",
                "batch": QUICK.model_dump(),
                "config": {"url": f"{url}/telemetry/temp", "retry_s": 0.2, "silence_s": 5},
            }
        )
        kernel = Kernel(config(broker, tmp_path, "dev-b", [observer]))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-b/telemetry/#") as seen:
            await seen.wait_for(
                lambda _: len(values(seen, "dev-b", "remote-temp")) >= 10, what="observed samples"
            )
            assert all(48 < v < 52 for v in values(seen, "dev-b", "remote-temp"))
            source = kernel.sensors.streams[0].source
            assert isinstance(source, CoapSource)
            source_stop.set()
            await source_task
            before = len(values(seen, "dev-b", "remote-temp"))
            source_stop = asyncio.Event()
            again = Kernel(
                config(broker, tmp_path, "dev-a", [temp], coap=coap.model_copy(update={"port": port}))
            )
            source_task = asyncio.create_task(again.run(source_stop))
            await seen.wait_for(
                lambda _: len(values(seen, "dev-b", "remote-temp")) >= before + 10,
                what="samples after the restart",
            )
            assert source.registrations >= 2
        stop.set()
        source_stop.set()
        await task
        await source_task

    asyncio.run(scenario())


async def _desire(fleet: MqttSession, generation: int, sensors: list[dict[str, Any]]) -> None:
    envelope = Envelope.new(src="fleet", type="desired", body={"generation": generation, "sensors": sensors})
    await fleet.publish(topics.desired(FLEET, "dev-1"), encode(envelope), qos=1, retain=True)


def test_desired_adds_reconfigures_and_removes_a_sensor(broker: Mosquitto, tmp_path: Path) -> None:
    base = SensorConfig(stream="base", rate_hz=10, batch=QUICK, sim=SimSignal(offset=5, amplitude=0))

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [base]))
        stop = asyncio.Event()
        fleet = MqttSession(BrokerConfig(url=broker.url, reconnect=FAST), client_id="fleet", persistent=False)
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/#") as seen, fleet:
            task = asyncio.create_task(kernel.run(stop))
            await seen.wait_for(lambda _: values(seen, "dev-1", "base"), what="the config's sensor")
            extra = {
                "stream": "extra",
                "rate_hz": 10,
                "batch": QUICK.model_dump(),
                "sim": {"offset": 100, "amplitude": 0, "noise": 0},
            }
            await _desire(fleet, 1, [base.model_dump(mode="json", exclude_none=True), extra])
            await seen.wait_for(lambda _: 100.0 in values(seen, "dev-1", "extra"), what="the added sensor")
            extra["sim"] = {"offset": 200, "amplitude": 0, "noise": 0}
            await _desire(fleet, 2, [base.model_dump(mode="json", exclude_none=True), extra])
            await seen.wait_for(
                lambda _: 200.0 in values(seen, "dev-1", "extra"), what="the reconfigured sensor"
            )
            await _desire(fleet, 3, [base.model_dump(mode="json", exclude_none=True)])
            await wait_until(lambda: kernel.sensors.names == ["base"], what="extra removed")
            removed_at = time.time()
            base_count = len(values(seen, "dev-1", "base"))
            await seen.wait_for(
                lambda _: len(values(seen, "dev-1", "base")) >= base_count + 10, what="base goes on"
            )
            # what it held at its removal may still go out (and unacknowledged envelopes again), but
            # nothing it read after
            extra_times = [
                sample.ts
                for message in seen.on(topics.telemetry(FLEET, "dev-1", "extra"))
                for sample in TelemetryBody.from_envelope(decode(message.payload)).samples
            ]
            assert max(extra_times) <= removed_at
            await _desire(
                fleet, 4, [{"stream": "bad", "driver": "replay", "config": {"file": "/nonexistent.csv"}}]
            )
            await wait_until(
                lambda: kernel.sensors.status().get("bad", {}).get("failures", 0) >= 1, what="a failure"
            )
            assert "nonexistent.csv" in str(kernel.sensors.status()["bad"]["last_error"])
            await _desire(fleet, 5, [{"stream": "bad", "driver": "nope"}])
            await wait_until(
                lambda: "no driver 'nope'" in str(kernel.sensors.status().get("bad", {}).get("last_error")),
                what="a driver that is not installed, said",
            )
            stop.set()
            await task
            await fleet.publish(topics.desired(FLEET, "dev-1"), b"", qos=1, retain=True)

    asyncio.run(scenario())


def test_inject_anomaly_command_end_to_end(broker: Mosquitto, tmp_path: Path) -> None:
    key = FleetKey.generate()
    (tmp_path / "fleet.pub").write_bytes(key.public_pem())
    vib = SensorConfig(
        stream="vibration", rate_hz=200, batch=QUICK, sim=SimSignal(kind="vibration", noise=0, amplitude=0.5)
    )
    replies = f"ek-reply/{FLEET}/ops"

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [vib], fleet_keys=[tmp_path / "fleet.pub"]))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        ops = MqttSession(
            BrokerConfig(url=broker.url), client_id="ops", subscriptions=[(replies, 1)], persistent=False
        )
        async with ops, Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/#") as seen:
            await ops.wait_subscribed(DEADLINE_S)
            await seen.wait_for(lambda _: len(values(seen, "dev-1", "vibration")) >= 50, what="samples")
            assert max(abs(v) for v in values(seen, "dev-1", "vibration")) < 0.7

            async def call(args: dict[str, Any]) -> dict[str, Any]:
                envelope = sign_command(
                    key, src="ops", device="dev-1", name="inject-anomaly", args=args, ttl_s=60
                )
                await ops.publish(
                    topics.cmd(FLEET, "dev-1", "inject-anomaly"),
                    encode(envelope),
                    qos=1,
                    response_topic=replies,
                    correlation_data=envelope.id.encode(),
                )
                async with asyncio.timeout(DEADLINE_S):
                    async for message in ops.messages():
                        return dict(decode(message.payload).body)
                raise AssertionError("no reply")

            refused = await call({"stream": "vibration", "kind": "wobble", "duration_s": 1})
            assert refused["ok"] is False
            assert "wobble" in json.dumps(refused)
            done = await call({"stream": "vibration", "kind": "burst", "duration_s": 1.0})
            assert done["ok"] is True
            await seen.wait_for(
                lambda _: max(abs(v) for v in values(seen, "dev-1", "vibration")) > 0.8,
                what="the injected burst",
            )
            assert kernel.counters["anomalies_injected"] == 1
        stop.set()
        await task

    asyncio.run(scenario())


def test_the_plant_answers_its_fan_in_a_running_device(broker: Mosquitto, tmp_path: Path) -> None:
    plant = SensorConfig.model_validate(
        {
            "stream": "cabinet",
            "rate_hz": 50,
            "batch": QUICK.model_dump(),
            "sim": {"kind": "plant", "noise": 0, "plant": {"ambient_c": 20, "time_constant_s": 0.5}},
        }
    )

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [plant]))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/#") as seen:
            await seen.wait_for(lambda _: values(seen, "dev-1", "cabinet"), what="temperatures")
            assert values(seen, "dev-1", "cabinet")[0] == pytest.approx(60.0)
            kernel.sensors.actuate("cabinet", 1.0)
            await seen.wait_for(
                lambda _: values(seen, "dev-1", "cabinet")[-1] < 26.0, what="the fan cooling the cabinet"
            )
        stop.set()
        await task

    asyncio.run(scenario())


def test_the_pid_agent_holds_the_plant_at_its_setpoint(broker: Mosquitto, tmp_path: Path) -> None:
    plant = SensorConfig.model_validate(
        {
            "stream": "cabinet",
            "rate_hz": 50,
            "batch": QUICK.model_dump(),
            "sim": {"kind": "plant", "noise": 0, "plant": {"ambient_c": 20, "time_constant_s": 0.5}},
        }
    )
    cooling = {
        "name": "cooling",
        "agent": "pid",
        "config": {
            "source": "cabinet",
            "setpoint": 40,
            "kp": 0.05,
            "ki": 0.2,
            "direction": "reverse",
            "output_min": 0,
            "output_max": 1,
            "actuate": "cabinet",
        },
    }

    async def scenario() -> None:
        kernel = Kernel(config(broker, tmp_path, "dev-1", [plant], agents=[cooling]))
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-1/telemetry/#") as seen:

            def settled() -> bool:
                last = values(seen, "dev-1", "cabinet")[-50:]
                return len(last) == 50 and all(abs(v - 40.0) < 1.0 for v in last)

            await seen.wait_for(lambda _: settled(), what="the cabinet held at 40 °C", timeout=3 * DEADLINE_S)
            assert values(seen, "dev-1", "cabinet")[0] > 55.0  # it started hot, fan off
            assert 0.0 < values(seen, "dev-1", "pid-output")[-1] < 1.0
        stop.set()
        await task

    asyncio.run(scenario())
