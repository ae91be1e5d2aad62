"""Resend pacing: a backlog drains at the pace of the acknowledgements and is not sent again while
they flow; a stall, or a message passed over, is still sent again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, OutboxConfig
from edgekernel.config.models import ReconnectConfig
from edgekernel.device.kernel import Kernel
from edgekernel.link import Mosquitto, MqttSession, Outbox
from edgekernel.protocol import TelemetryBody, decode, encode, topics
from edgekernel.protocol.bodies import AckBody, Sample

from .helpers import wait_until

pytestmark = pytest.mark.integration

FLEET, DEVICE = "plant", "dev-1"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
BACKLOG = 600
RESEND_AFTER_S = 1.0


class SlowAcker:
    """A gateway that stores nothing and acknowledges at most `per_tick` messages every 0.1 s, in the
    order they came (the real gateway is faster than the device here; this one is slower on purpose).
    `paused` holds the acknowledgements back; seqs in `skip_once` are not acknowledged the first time.
    Acks name the seq space (epoch) the messages came in, as the gateway's do."""

    def __init__(self, broker: Mosquitto, per_tick: int) -> None:
        self.session = MqttSession(
            BrokerConfig(url=broker.url, reconnect=FAST),
            client_id="slow-acker",
            subscriptions=[(f"ek/v1/{FLEET}/{DEVICE}/telemetry/#", 1)],
        )
        self.per_tick = per_tick
        self.received: Counter[int] = Counter()
        self.paused = False
        self.skip_once: set[int] = set()
        self._waiting: list[int] = []
        self._acked: set[int] = set()
        self._epoch = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.session.start()
        await self.session.wait_connected(10)
        receiver = asyncio.create_task(self._receive())
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if self.paused or not self._waiting:
                continue
            now, self._waiting = self._waiting[: self.per_tick], self._waiting[self.per_tick :]
            self._acked.update(now)
            ack = AckBody.of(sorted(set(now)), epoch=self._epoch)
            self.session.publish_nowait(topics.ack(FLEET, DEVICE), encode(ack.to_envelope("gw")), qos=1)
        receiver.cancel()
        await self.session.close()

    async def _receive(self) -> None:
        async for message in self.session.messages():
            envelope = decode(message.payload)
            seq = envelope.seq
            assert seq is not None
            self._epoch = envelope.epoch or 0
            self.received[seq] += 1
            if seq in self.skip_once:
                self.skip_once.discard(seq)
                continue
            self._waiting.append(seq)


def config(tmp_path: Path, broker: Mosquitto) -> DeviceConfig:
    return DeviceConfig(
        fleet=FLEET,
        device=DEVICE,
        broker=BrokerConfig(url=broker.url, reconnect=FAST),
        data_dir=tmp_path / DEVICE,
        outbox=OutboxConfig(resend_after_s=RESEND_AFTER_S, max_in_flight=50, synchronous="NORMAL"),
    )


async def fill(cfg: DeviceConfig, count: int) -> None:
    """A backlog left by an outage: `count` messages committed long before they can be sent."""
    topic = topics.telemetry(FLEET, DEVICE, "vibration")
    async with Outbox(cfg.data_dir / "outbox.db", cfg.outbox) as outbox:
        for _ in range(count):
            body = TelemetryBody(stream="vibration", samples=[Sample(ts=time.time(), value=0.5)])
            await outbox.put(
                topic, lambda seq, body=body: encode(body.to_envelope(DEVICE, seq=seq, epoch=outbox.epoch))
            )


async def drain(kernel: Kernel, acker: SlowAcker, during: float = 0.0) -> float:
    """Run the device and the acker until the outbox is empty; returns how long that took."""
    stop_device, stop_acker = asyncio.Event(), asyncio.Event()
    acker_task = asyncio.create_task(acker.run(stop_acker))
    await asyncio.sleep(0.5)  # subscribed before the device sends
    started = time.monotonic()
    device_task = asyncio.create_task(kernel.run(stop_device))
    await kernel.session.wait_connected(10)
    await asyncio.sleep(during)
    acker.paused = False
    await wait_until(lambda: kernel.outbox.stats().pending == 0, timeout=120, what="the backlog acknowledged")
    took = time.monotonic() - started
    stop_device.set()
    await device_task
    stop_acker.set()
    await acker_task
    return took


def test_a_backlog_draining_slower_than_resend_after_is_sent_once(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = config(tmp_path, broker)
    kernel, acker = Kernel(cfg), SlowAcker(broker, per_tick=12)  # about 120 a second: 5 s to drain

    async def main() -> float:
        await fill(cfg, BACKLOG)
        return await drain(kernel, acker)

    took = asyncio.run(main())
    assert took > 2 * RESEND_AFTER_S, f"drained in {took:.1f} s: too fast to show anything"
    sent = kernel.outbox.stats().sent
    assert kernel.counters["outbox_resends"] == 0
    assert sent / BACKLOG <= 1.05, f"sent {sent} to clear {BACKLOG}"
    assert set(acker.received) == set(range(1, BACKLOG + 1))
    assert sum(acker.received.values()) - BACKLOG <= BACKLOG * 0.05


def test_stalled_acknowledgements_are_resent(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = config(tmp_path, broker)
    kernel, acker = Kernel(cfg), SlowAcker(broker, per_tick=50)
    acker.paused = True

    async def main() -> None:
        await fill(cfg, 200)
        await drain(kernel, acker, during=3 * RESEND_AFTER_S)

    asyncio.run(main())
    assert kernel.counters["outbox_resends"] >= 1
    assert kernel.counters["outbox_resends"] <= 4  # once per resend_after_s at most while stalled
    assert set(acker.received) == set(range(1, 201))
    assert max(acker.received.values()) >= 2
    assert kernel.outbox.stats().sent <= 200 + 4 * 50  # only what was in flight went again


def test_a_message_passed_over_by_later_acks_is_resent(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = config(tmp_path, broker)
    kernel, acker = Kernel(cfg), SlowAcker(broker, per_tick=12)  # acks keep flowing for about 3 s
    acker.skip_once = {7}

    async def main() -> None:
        await fill(cfg, 400)
        await drain(kernel, acker)

    asyncio.run(main())
    assert acker.received[7] >= 2
    assert kernel.counters["outbox_resends"] >= 1
    assert set(acker.received) == set(range(1, 401))
