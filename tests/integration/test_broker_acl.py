"""The fleet's Mosquitto ACL (`edgekernel fleet acl`) on a real broker: devices and gateways work under
it, and a device that tries to speak for another (forged telemetry, a forged ack, reading its commands)
is stopped by the broker before anything reaches the gateway or the other device."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, StoreConfig
from edgekernel.device.kernel import Kernel
from edgekernel.fleet.acl import mosquitto_acl
from edgekernel.fleet.calls import call
from edgekernel.gateway import Gateway
from edgekernel.link import LinkError, Mosquitto, MqttSession, Outbox
from edgekernel.protocol import FleetKey, Sample, TelemetryBody, encode, topics
from edgekernel.protocol.bodies import AckBody

from .helpers import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
USERS = ("dev-01", "dev-02", "gw", "ops")


@pytest.fixture
def acl_broker(tmp_path: Path, mosquitto_binary: Path) -> Mosquitto:
    passwd = tmp_path / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for n, user in enumerate(USERS):
        create = ["-c"] if n == 0 else []
        subprocess.run(
            [tool, *create, "-b", str(passwd), user, f"pw-{user}"], check=True, capture_output=True
        )
    acl = tmp_path / "acl"
    acl.write_text(mosquitto_acl(FLEET, gateways=["gw"], operators=["ops"]))
    return Mosquitto(tmp_path / "broker", password_file=passwd, acl_file=acl)


def as_user(broker: Mosquitto, user: str) -> BrokerConfig:
    return BrokerConfig(url=broker.url, username=user, password=f"pw-{user}", reconnect=FAST)


def device(broker: Mosquitto, tmp_path: Path, name: str, keys: list[Path]) -> Kernel:
    return Kernel(
        DeviceConfig(
            fleet=FLEET,
            device=name,
            broker=as_user(broker, name),
            data_dir=tmp_path / name,
            outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
            fleet_keys=keys,
            sensors=[SensorConfig(stream="vibration", rate_hz=100, batch=BatchConfig(max_samples=5))],
        )
    )


def test_devices_speak_only_for_themselves_under_the_fleet_acl(acl_broker: Mosquitto, tmp_path: Path) -> None:
    key = FleetKey.generate()
    (tmp_path / "fleet.pub").write_bytes(key.public_pem())
    store = tmp_path / "store.db"

    async def scenario() -> None:
        gw = Gateway(
            GatewayConfig(
                fleet=FLEET,
                gateway="gw-1",
                broker=as_user(acl_broker, "gw"),
                store=StoreConfig(path=store),
                share_group="ingest",  # a shared subscription is allowed by the same read rule
            )
        )
        kernels = [
            device(acl_broker, tmp_path, name, [tmp_path / "fleet.pub"]) for name in ("dev-01", "dev-02")
        ]
        stops = [asyncio.Event() for _ in range(3)]
        gw_task = asyncio.create_task(gw.run(stops[0]))
        await gw.session.wait_subscribed(10)
        tasks = [asyncio.create_task(k.run(stop)) for k, stop in zip(kernels, stops[1:], strict=True)]
        for kernel in kernels:
            await kernel.session.wait_subscribed(10)
        assert gw.session.stats.subscribe_failures == 0
        assert all(k.session.stats.subscribe_failures == 0 for k in kernels)

        # dev-02 tries to speak for dev-01, and to read dev-01's commands
        forged = TelemetryBody(stream="vibration", samples=[Sample(ts=1.7e9, value=1.0)])
        intruder = MqttSession(
            as_user(acl_broker, "dev-02"),
            client_id="intruder",
            subscriptions=[(topics.subscription(FLEET, topics.TopicKind.CMD, device="dev-01"), 1)],
            persistent=False,
        )
        async with intruder:
            await intruder.wait_connected(10)
            with pytest.raises(LinkError, match=r"[Nn]ot authorized"):
                await intruder.publish(
                    topics.telemetry(FLEET, "dev-01", "vibration"),
                    encode(forged.to_envelope("dev-01", seq=10**6)),
                    qos=1,
                )
            with pytest.raises(LinkError, match=r"[Nn]ot authorized"):
                await intruder.publish(
                    topics.ack(FLEET, "dev-01"), encode(AckBody.of(range(1, 500)).to_envelope("gw-1")), qos=1
                )
            # the fleet's operator calls dev-01, which answers under the ACL; dev-02, subscribed to
            # dev-01's commands (Mosquitto grants it), is not given them
            result = await call(as_user(acl_broker, "ops"), FLEET, "dev-01", "ping", {}, key=key, timeout=60)
            assert result.reply.ok
            await asyncio.sleep(0.3)
            assert intruder.stats.received == intruder.backlog == 0

        await wait_until(lambda: kernels[0].outbox.stats().acked > 20, what="acks under the ACL")
        for stop in stops[1:]:
            stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.3)
        stops[0].set()
        await gw_task

    with acl_broker:
        asyncio.run(scenario())

    with sqlite3.connect(store) as db:
        seqs = [s for (s,) in db.execute("SELECT seq FROM messages WHERE device = 'dev-01' ORDER BY seq")]
    assert 10**6 not in seqs
    assert seqs == list(range(1, len(seqs) + 1))  # nothing forged in, nothing freed that was not stored

    async def waiting() -> set[int]:
        async with Outbox(tmp_path / "dev-01" / "outbox.db") as outbox:
            return {m.seq for m in await outbox.pending(10**6)}

    assert not (asyncio.run(waiting()) & set(seqs[:-20]))
