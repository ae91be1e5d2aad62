"""The broker's limits from its CONNACK are honoured: Maximum Packet Size (batches split to fit, what
cannot fit even alone dead-lettered `too-large`, the device stays connected), Receive Maximum (never
more QoS 1 publishes unacknowledged), Shared Subscription Available 0 (a gateway with share_group
stops with an error naming it)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, StoreConfig
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, MqttSession, Outbox, free_port
from edgekernel.link.broker import port_open
from edgekernel.protocol import Encoding, Sample, TelemetryBody, encode, topics
from tests.waiting import DEADLINE_S
from tests.waiting import wait_until as wait_until_sync

from .helpers import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)


def stored_samples(store: Path) -> list[tuple[int, int]]:
    """(seq, samples) of each telemetry message stored."""
    if not store.exists():
        return []
    with contextlib.closing(sqlite3.connect(store, timeout=30)) as db:
        return list(db.execute("SELECT seq, samples FROM messages WHERE seq IS NOT NULL ORDER BY seq"))


async def put_oversized(data_dir: Path) -> int:
    """A message committed while the broker had no limit (say, before its config changed)."""
    body = TelemetryBody(stream="v", unit="g", samples=[Sample(ts=1.7e9 + i, value=i) for i in range(100)])
    async with Outbox(data_dir / "outbox.db") as outbox:
        topic = topics.telemetry(FLEET, "d1", "v")
        return await outbox.put(
            topic,
            lambda seq: encode(body.to_envelope("d1", seq=seq, epoch=outbox.epoch), Encoding.CBOR),
            stream="v",
        )


def test_a_256_byte_packet_limit_splits_batches_and_dead_letters_what_never_fits(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", max_packet_size=256) as broker:
        data_dir = tmp_path / "d1"
        oversized = asyncio.run(put_oversized(data_dir))
        kernel = Kernel(
            DeviceConfig(
                fleet=FLEET,
                device="d1",
                encoding=Encoding.CBOR,
                broker=BrokerConfig(url=broker.url, reconnect=FAST),
                data_dir=data_dir,
                outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
                sensors=[
                    SensorConfig(stream="v", rate_hz=200, batch=BatchConfig(max_samples=20, max_wait_ms=200))
                ],
            )
        )
        gw = Gateway(
            GatewayConfig(
                fleet=FLEET,
                gateway="gw-1",
                broker=BrokerConfig(url=broker.url, reconnect=FAST),
                store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
            )
        )
        store = tmp_path / "store.db"

        async def scenario() -> None:
            stop_dev, stop_gw = asyncio.Event(), asyncio.Event()
            gw_task = asyncio.create_task(gw.run(stop_gw))
            await gw.session.wait_subscribed(DEADLINE_S)
            dev_task = asyncio.create_task(kernel.run(stop_dev))
            try:
                await wait_until(lambda: len(stored_samples(store)) >= 100, what="100 parts stored")
                await wait_until(lambda: kernel.outbox.stats().dead == 1, what="the oversized one dead")
                stats = await kernel._stats(None)  # type: ignore[arg-type]  # what `device stats` shows
            finally:
                stop_dev.set()
                await dev_task
                stop_gw.set()
                await gw_task
            assert isinstance(kernel.session, MqttSession)
            assert kernel.session.limits.maximum_packet_size == 256
            assert kernel.counters["telemetry_split"] > 0
            assert isinstance(stats, dict)
            counters, link = stats["counters"], stats["link"]
            assert isinstance(counters, dict)
            assert isinstance(link, dict)
            assert counters["dead:too-large"] == 1
            assert isinstance(link["too_large"], int)
            assert link["too_large"] >= 1
            # connected once, never dropped by the broker for a packet too large
            assert (kernel.session.stats.connects, kernel.session.stats.disconnects) == (1, 1)
            assert (gw.session.stats.connects, gw.session.stats.disconnects) == (1, 1)
            assert "too large" not in broker.log_path.read_text().lower()

        asyncio.run(scenario())
        with contextlib.closing(sqlite3.connect(data_dir / "outbox.db")) as db:
            dead = list(db.execute("SELECT seq, reason FROM dead"))
        assert dead == [(oversized, "too-large")]
        parts = stored_samples(store)
        assert all(samples < 20 for _, samples in parts)  # every 20-sample batch went in parts
        assert oversized not in {seq for seq, _ in parts}


class InFlightCounter:
    """A TCP relay between clients and the broker that reads the MQTT packets both ways: the most QoS 1
    PUBLISH packets a client had sent that the broker had not acknowledged (PUBACK) to it. What the
    broker says is held back a little, so that a client that does not wait for its acknowledgements
    shows it."""

    def __init__(self, broker: Mosquitto, hold_s: float = 0.05) -> None:
        self.broker, self.hold_s = broker, hold_s
        self.unacked: set[int] = set()
        self.peak = 0
        self.published = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> InFlightCounter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.append(client_w)
        try:
            broker_r, broker_w = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:  # the broker is down: so is the client's connection
            client_w.close()
            return
        self._writers.append(broker_w)
        for task in (
            self._relay(client_r, broker_w, self._from_client, 0.0),
            self._relay(broker_r, client_w, self._from_broker, self.hold_s),
        ):
            self._tasks.add(asyncio.create_task(task))

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: Callable[[int, bytes], None],
        hold: float,
    ) -> None:
        try:
            while True:
                first = await reader.readexactly(1)
                length, multiplier, header = 0, 1, bytearray(first)
                while True:
                    byte = (await reader.readexactly(1))[0]
                    header.append(byte)
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    if byte < 128:
                        break
                body = await reader.readexactly(length)
                if hold:
                    await asyncio.sleep(hold)
                seen(first[0], body)  # counted as it passes on: as the other side learns of it
                writer.write(bytes(header) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the other side goes too

    def _from_client(self, first: int, body: bytes) -> None:
        if first >> 4 == 3 and (first >> 1) & 3 == 1:  # PUBLISH, QoS 1
            topic_length = int.from_bytes(body[:2], "big")
            self.unacked.add(int.from_bytes(body[2 + topic_length : 4 + topic_length], "big"))
            self.published += 1
            self.peak = max(self.peak, len(self.unacked))

    def _from_broker(self, first: int, body: bytes) -> None:
        if first >> 4 == 4:  # PUBACK
            self.unacked.discard(int.from_bytes(body[:2], "big"))


@pytest.mark.parametrize("offline", [False, True], ids=["connected", "queued-offline"])
def test_never_more_unacknowledged_publishes_than_the_brokers_receive_maximum(
    tmp_path: Path, offline: bool
) -> None:
    """20 QoS 1 publishes at once, to a connected session, or to one whose broker is down and then
    comes back: the broker announced Receive Maximum 2."""
    with Mosquitto(tmp_path / "broker", max_inflight_messages=2) as broker:

        async def scenario() -> None:
            async with InFlightCounter(broker) as relay:
                config = BrokerConfig(url=f"mqtt://127.0.0.1:{relay.port}", reconnect=FAST)
                async with MqttSession(config, client_id="burst") as session:
                    await session.wait_connected(DEADLINE_S)
                    assert session.limits.receive_maximum == 2
                    if offline:
                        broker.stop()
                        await wait_until(lambda: not session.connected, what="the session to see it")
                    queued = [session.publish_nowait("t/x", b"%d" % i, qos=1) for i in range(20)]
                    if offline:
                        broker.start()
                    await asyncio.wait_for(asyncio.gather(*queued), DEADLINE_S)
                    assert relay.published == 20
                    assert relay.peak == 2, f"{relay.peak} QoS 1 publishes unacknowledged at once"
                    assert session.stats.peak_in_flight == 2
                    assert session.stats.in_flight == 0

        asyncio.run(scenario())


def test_a_gateway_with_share_group_stops_on_a_broker_without_shared_subscriptions(tmp_path: Path) -> None:
    port = free_port()
    broker = subprocess.Popen(
        [sys.executable, "-m", "mqttools", "broker", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_sync(lambda: port_open("127.0.0.1", port), "the mqttools broker to listen")
        config = tmp_path / "gw.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "fleet": FLEET,
                    "gateway": "gw-1",
                    "share_group": "ingest",
                    "broker": {"url": f"mqtt://127.0.0.1:{port}"},
                    "store": {"path": str(tmp_path / "store.db")},
                }
            )
        )
        gateway = subprocess.run(
            [sys.executable, "-m", "edgekernel", "gateway", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    finally:
        broker.kill()
        broker.wait()
    assert gateway.returncode == 1, gateway.stderr[-2000:]
    said = gateway.stderr + gateway.stdout
    assert "share_group" in said, said[-2000:]
    assert "shared subscriptions" in said, said[-2000:]
    assert said.count("Shared Subscription Available 0") <= 3, "it retried"
