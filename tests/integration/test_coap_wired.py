"""CoAP in the programs: a device's own resources, and a CoAP-only device delivering through the gateway's
``/ingest`` with the same outbox and acknowledgement as over MQTT."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.kernel import KernelConfig, ModelSpec
from edgekernel.config.models import (
    BatchConfig,
    DeviceCoapConfig,
    GatewayCoapConfig,
    ReconnectConfig,
    SensorConfig,
    SimSignal,
    StoreConfig,
)
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, Outbox, free_port
from edgekernel.link.coap import CoapBadRequest, CoapClient, CoapError, CoapNotFound
from edgekernel.protocol import Encoding, StatusBody, TelemetryBody, decode, topics
from tests.stores import rows
from tests.waiting import DEADLINE_S
from tools.datasets import split

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
MODELS = Path(__file__).resolve().parents[2] / "models"


def vibration_model() -> ModelSpec:
    manifest = {m["file"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}
    return ModelSpec(
        name="vibration",
        file=MODELS / "vibration_cnn.int8.onnx",
        sha256=manifest["vibration_cnn.int8.onnx"]["sha256"],
        runtime="onnx",
        memory_mb=8,
    )


def coap_device(tmp_path: Path, coap: DeviceCoapConfig, *, broker: str = "mqtt://127.0.0.1:1") -> Kernel:
    return Kernel(
        DeviceConfig(
            fleet=FLEET,
            device="dev-1",
            broker=BrokerConfig(url=broker, reconnect=FAST),
            data_dir=tmp_path / "dev-1",
            encoding=Encoding.CBOR,
            outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
            coap=coap,
            kernel=KernelConfig(models=[vibration_model()]),
            sensors=[
                SensorConfig(
                    stream="vibration",
                    rate_hz=200,
                    batch=BatchConfig(max_samples=10, max_wait_ms=100),
                    sim=SimSignal(kind="vibration", seed=5),
                )
            ],
        )
    )


def gateway(broker: Mosquitto, tmp_path: Path, coap_port: int) -> Gateway:
    return Gateway(
        GatewayConfig(
            fleet=FLEET,
            gateway="gw-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
            coap=GatewayCoapConfig(host="127.0.0.1", port=coap_port),
        )
    )


def stored(path: Path) -> list[int]:
    return [seq for (seq,) in rows(path, "SELECT seq FROM messages ORDER BY seq")]


def test_device_serves_health_telemetry_and_inference(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        kernel = coap_device(tmp_path, DeviceCoapConfig(host="127.0.0.1", port=0), broker=broker.url)
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_connected(10)
        assert kernel.coap is not None
        url = kernel.coap.url
        async with CoapClient(timeout=10) as client:
            links = (await client.get(f"{url}/.well-known/core")).payload.decode()
            for path in ("</health>", "</telemetry/vibration>", "</infer/vibration>"):
                assert path in links
            async with client.observe(f"{url}/telemetry/vibration") as updates:
                first = await anext(updates)
                second = await anext(updates)
            one, two = (TelemetryBody.from_envelope(r.envelope()) for r in (first, second))
            assert one.stream == two.stream == "vibration"
            assert first.envelope().seq != second.envelope().seq

            health = (await client.get(f"{url}/health", accept=Encoding.JSON)).data()
            assert isinstance(health, dict)
            assert health["status"] == "ok"
            assert health["counters"]["kernel.telemetry_sent"] >= 2

            x, _ = split("vibration", "test", n=3)
            answer = await client.post(
                f"{url}/infer/vibration",
                json.dumps({"inputs": [x.tolist()]}).encode(),
                content_format=Encoding.JSON,
            )
            data = answer.data()
            assert isinstance(data, dict)
            probs = np.array(data["outputs"][0])
            assert probs.shape == (3, 2)
            assert np.allclose(probs.sum(axis=1), 1.0, atol=0.02)

            with pytest.raises(CoapNotFound, match="nope"):
                await client.post(f"{url}/infer/nope", b'{"inputs": [[1.0]]}', content_format=Encoding.JSON)
            with pytest.raises(CoapBadRequest):
                await client.post(
                    f"{url}/infer/vibration", b'{"inputs": [[1.0, 2.0]]}', content_format=Encoding.JSON
                )
        stop.set()
        await task

    asyncio.run(scenario())


def test_coap_only_device_delivers_through_gateway_outage(broker: Mosquitto, tmp_path: Path) -> None:
    """No broker for the device: it posts to the gateway, holds its backlog while the gateway is down,
    and after it is back everything is stored exactly once and acknowledged."""
    port = free_port()

    async def scenario() -> None:
        kernel = coap_device(
            tmp_path,
            DeviceCoapConfig(
                serve=False, gateway_url=f"coap://127.0.0.1:{port}", timeout_s=1.0, reconnect=FAST
            ),
        )
        store = tmp_path / "store.db"
        stop_gw, stop_dev = asyncio.Event(), asyncio.Event()
        gw = gateway(broker, tmp_path, port)
        gw_task = asyncio.create_task(gw.run(stop_gw))
        dev_task = asyncio.create_task(kernel.run(stop_dev))
        await kernel.session.wait_connected(DEADLINE_S)
        await wait_until(lambda: len(stored(store)) >= 20, what="first envelopes stored")

        stop_gw.set()  # the gateway goes away for a while; the device keeps committing
        await gw_task
        await wait_until(lambda: not kernel.session.connected, what="the device notices")
        await asyncio.sleep(1.5)
        await wait_until(lambda: kernel.outbox.stats().pending > 0, what="a backlog in the outbox")

        stop_gw = asyncio.Event()
        gw = gateway(broker, tmp_path, port)
        gw_task = asyncio.create_task(gw.run(stop_gw))
        await kernel.session.wait_connected(DEADLINE_S)
        target = kernel.outbox.stats().highest_seq
        await wait_until(lambda: set(range(1, target + 1)) <= set(stored(store)), what="the backlog stored")
        stop_dev.set()
        await dev_task
        await asyncio.sleep(0.3)
        stop_gw.set()
        await gw_task

        seqs = stored(store)
        assert len(seqs) == len(set(seqs))
        async with Outbox(tmp_path / "dev-1" / "outbox.db") as outbox:
            waiting = {m.seq for m in await outbox.pending(10**6)}
        everything = set(seqs) | waiting
        assert everything == set(range(1, max(everything) + 1))
        assert len(set(seqs) & waiting) <= 16  # stored is freed, but for answers still on their way
        assert kernel.session.stats.connects >= 2
        assert gw.counters["received:coap"] > 0
        with sqlite3.connect(store) as db:
            [(online,)] = db.execute("SELECT online FROM devices WHERE device = 'dev-1'")
        assert online == 0  # the last status, posted at a clean stop
        async with Collector(broker.url, topics.status(FLEET, "dev-1")) as seen:  # bridged, retained
            await seen.wait_for(lambda ms: len(ms) >= 1, what="the retained status")
            assert StatusBody.from_envelope(decode(seen.messages[-1].payload)).online is False

    asyncio.run(scenario())


def test_gateway_refuses_bad_posts_with_a_reason(broker: Mosquitto, tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> None:
        stop = asyncio.Event()
        gw = gateway(broker, tmp_path, port)
        task = asyncio.create_task(gw.run(stop))
        await gw.session.wait_connected(10)
        url = f"coap://127.0.0.1:{port}/ingest"
        async with CoapClient(timeout=5) as client:
            with pytest.raises(CoapBadRequest, match="bad-envelope"):
                await client.post(url, b"{not json", content_format=Encoding.JSON)
            with pytest.raises(CoapBadRequest, match="wrong-type"):
                await client.post(
                    url,
                    json.dumps(
                        {"v": 1, "id": "a" * 16, "src": "dev-9", "ts": 1.7e9, "type": "cmd", "body": {}}
                    ).encode(),
                    content_format=Encoding.JSON,
                )
        await asyncio.sleep(0.3)
        stop.set()
        await task
        with sqlite3.connect(tmp_path / "store.db") as db:
            reasons = [r for (r,) in db.execute("SELECT reason FROM rejected WHERE topic = 'coap:/ingest'")]
        assert len(reasons) == 2
        assert "wrong-type" in reasons

    asyncio.run(scenario())


def test_with_a_device_list_the_gateway_refuses_any_other_sender(broker: Mosquitto, tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> None:
        stop = asyncio.Event()
        gw = Gateway(
            GatewayConfig(
                fleet=FLEET,
                gateway="gw-1",
                broker=BrokerConfig(url=broker.url, reconnect=FAST),
                store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
                coap=GatewayCoapConfig(host="127.0.0.1", port=port, devices=["dev-1"]),
            )
        )
        task = asyncio.create_task(gw.run(stop))
        await gw.session.wait_connected(10)
        body = TelemetryBody.model_validate({"stream": "s", "samples": [{"ts": 1.7e9, "value": 1.0}]})
        url = f"coap://127.0.0.1:{port}/ingest"
        async with CoapClient(timeout=5) as client:
            ack = await client.post_envelope(url, body.to_envelope("dev-1", seq=1))
            assert ack is not None
            assert ack.ranges == [[1, 1]]
            with pytest.raises(CoapError, match="not a CoAP device") as refused:
                await client.post_envelope(url, body.to_envelope("dev-2", seq=1))
            assert refused.value.code == "4.03"
        await asyncio.sleep(0.3)
        stop.set()
        await task
        with sqlite3.connect(tmp_path / "store.db") as db:
            assert list(db.execute("SELECT device, seq FROM messages")) == [("dev-1", 1)]
            assert list(db.execute("SELECT reason FROM rejected")) == [("not-allowed",)]

    asyncio.run(scenario())


def test_a_coap_only_device_that_dies_is_marked_offline(broker: Mosquitto, tmp_path: Path) -> None:
    """No Last Will over CoAP: the gateway marks a silent CoAP-only device offline itself."""
    port = free_port()
    config = tmp_path / "dev-1.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "device": "dev-1",
                "data_dir": str(tmp_path / "dev-1"),
                "coap": {"serve": False, "gateway_url": f"coap://127.0.0.1:{port}"},
                "sensors": [{"stream": "vibration", "rate_hz": 20}],
            }
        )
    )

    async def scenario() -> None:
        gw = Gateway(
            GatewayConfig(
                fleet=FLEET,
                gateway="gw-1",
                broker=BrokerConfig(url=broker.url, reconnect=FAST),
                store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
                # long enough that a device slowed by a loaded machine is not silent for it
                coap=GatewayCoapConfig(host="127.0.0.1", port=port, offline_after_s=5.0),
            )
        )
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        argv = [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)]
        dev = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await wait_until(lambda: device_online(tmp_path) is True, timeout=120, what="online")
            dev.kill()  # no goodbye
            await dev.wait()
            await wait_until(lambda: device_online(tmp_path) is False, what="marked offline")
            async with Collector(broker.url, topics.status(FLEET, "dev-1")) as seen:
                await seen.wait_for(lambda ms: len(ms) >= 1, what="the retained status")
                assert StatusBody.from_envelope(decode(seen.messages[-1].payload)).online is False
        finally:
            if dev.returncode is None:
                dev.kill()
                await dev.wait()
            stop.set()
            await task
        assert gw.counters["coap_offline"] == 1

    asyncio.run(scenario())


def device_online(tmp_path: Path) -> bool | None:
    found = rows(tmp_path / "store.db", "SELECT online FROM devices WHERE device = 'dev-1'")
    return None if not found or found[0][0] is None else bool(found[0][0])
