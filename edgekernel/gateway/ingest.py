"""The gateway: subscribes to its fleet, validates what arrives, and stores it in batches.

Every message is parsed (topic), decoded (size limit first) and checked against its topic (sender,
type, stream). What breaks the contract is refused with a reason: counted, logged and kept in the
store's ``rejected`` table; nothing else is lost. Good telemetry goes to SQLite in batched
transactions; duplicates by (device, seq) are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from edgekernel.config.models import GatewayConfig
from edgekernel.gateway.store import DeviceUpdate, Rejected, Store, TelemetryRecord, encode_fields
from edgekernel.link import Message, MqttSession
from edgekernel.protocol import (
    Envelope,
    ProtocolError,
    ReportedBody,
    StatusBody,
    TelemetryBody,
    Topic,
    TopicKind,
    decode,
    topics,
)

log = logging.getLogger(__name__)

_NOT_FOR_US = frozenset({TopicKind.DESIRED, TopicKind.ACK, TopicKind.CMD, TopicKind.LOG, TopicKind.AGG})
_EXPECTED_TYPE = {
    TopicKind.TELEMETRY: "telemetry",
    TopicKind.EVENTS: "event",
    TopicKind.STATUS: "status",
    TopicKind.REPORTED: "reported",
}


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.fleet = config.fleet
        self.store = Store(config.store.path)
        self.counters: Counter[str] = Counter()
        self._telemetry: list[TelemetryRecord] = []
        self._devices: list[DeviceUpdate] = []
        self._rejected: list[Rejected] = []
        self._last_seen: dict[str, float] = {}
        self._wake = asyncio.Event()
        everything = topics.fleet_subscription(self.fleet)
        subscriptions = [(everything, 1)]
        if config.share_group is not None:
            subscriptions = [
                (topics.shared(config.share_group, everything), 1),
                (topics.subscription(self.fleet, TopicKind.STATUS), 1),
                (topics.subscription(self.fleet, TopicKind.REPORTED), 1),
            ]
        self.session = MqttSession(
            config.broker,
            client_id=f"ek-{self.fleet}-gw-{config.gateway}",
            subscriptions=subscriptions,
        )

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            self.session.start()
            inbox = tasks.create_task(self._inbox_loop(), name="inbox")
            flusher = tasks.create_task(self._flush_loop(stop), name="flush")
            await stop.wait()
            inbox.cancel()
            self._wake.set()
            await flusher
        await self.session.close()
        self.store.close()
        log.info("gateway %s stopped: %s", self.config.gateway, dict(self.counters))

    async def _inbox_loop(self) -> None:
        async for message in self.session.messages():
            self.handle(message)

    @property
    def pending(self) -> int:
        return len(self._telemetry) + len(self._devices) + len(self._rejected) + len(self._last_seen)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        wait_s = self.config.store.batch_wait_ms / 1000.0
        while True:
            self._wake.clear()
            if not self.pending:
                if stop.is_set():
                    return
                await self._wake.wait()
            if len(self._telemetry) < self.config.store.batch_max and not stop.is_set():
                await asyncio.sleep(wait_s)
            await self.flush()

    async def flush(self) -> None:
        seen = [DeviceUpdate(device, at) for device, at in self._last_seen.items()]
        batch = (self._telemetry, self._devices + seen, self._rejected)
        self._telemetry, self._devices, self._rejected, self._last_seen = [], [], [], {}
        if not any(batch):
            return
        result = await asyncio.to_thread(self.store.write, *batch)
        self.counters["stored"] += result.stored
        self.counters["duplicates"] += result.duplicates
        self.counters["samples_stored"] += result.samples

    def handle(self, message: Message) -> None:
        """Validate one message and queue what it carries for the next batch."""
        self.counters["received"] += 1
        try:
            topic = topics.parse(message.topic)
            if topic.fleet != self.fleet:
                raise ProtocolError("other-fleet", f"not of fleet {self.fleet}")
            if topic.kind in _NOT_FOR_US:
                self.counters["ignored"] += 1
                return
            if not message.payload and topic.kind in (TopicKind.STATUS, TopicKind.REPORTED):
                self.counters["cleared"] += 1  # an empty retained message clears the topic
                return
            envelope = decode(message.payload, max_size=self.config.max_payload_bytes)
            self._check_sender(topic, envelope)
            self._accept(topic, envelope, message)
        except ProtocolError as err:
            self._refuse(message, err)
            return
        self._wake.set()

    @staticmethod
    def _check_sender(topic: Topic, envelope: Envelope) -> None:
        if envelope.src != topic.device:
            raise ProtocolError("src-mismatch", f"envelope from {envelope.src!r} on {topic.device!r}'s topic")
        expected = _EXPECTED_TYPE[topic.kind]
        if envelope.type != expected:
            raise ProtocolError("wrong-type", f"a {envelope.type} envelope on a {topic.kind.value} topic")

    def _accept(self, topic: Topic, envelope: Envelope, message: Message) -> None:
        if topic.kind is TopicKind.TELEMETRY:
            body = TelemetryBody.from_envelope(envelope)
            if body.stream != topic.name:
                raise ProtocolError("stream-mismatch", f"stream {body.stream!r} on topic of {topic.name!r}")
            if envelope.seq is None:
                raise ProtocolError("no-seq", "telemetry must carry a seq")
            samples = tuple((s.ts, *encode_fields(s.value)) for s in body.samples)
            self._telemetry.append(
                TelemetryRecord(
                    topic.device, body.stream, envelope.seq, envelope.ts, message.received_at, samples
                )
            )
            self._seen(topic.device, message.received_at)
        elif topic.kind is TopicKind.STATUS:
            status = StatusBody.from_envelope(envelope)
            self._devices.append(
                DeviceUpdate(
                    topic.device,
                    message.received_at,
                    online=status.online,
                    boot=status.boot,
                    status_ts=envelope.ts,
                )
            )
        elif topic.kind is TopicKind.REPORTED:
            reported = ReportedBody.from_envelope(envelope)
            self._devices.append(
                DeviceUpdate(
                    topic.device,
                    message.received_at,
                    reported=reported.model_dump_json(),
                    reported_ts=envelope.ts,
                )
            )
        else:
            self.counters["events"] += 1
            self._seen(topic.device, message.received_at)
        self.counters[f"accepted:{topic.kind.value}"] += 1

    def _seen(self, device: str, at: float) -> None:
        self._last_seen[device] = at

    def _refuse(self, message: Message, err: ProtocolError) -> None:
        self.counters[f"rejected:{err.reason}"] += 1
        self.counters["rejected"] += 1
        log.warning(
            "refused message on %s [%s, %d bytes]: %s", message.topic, err.reason, len(message.payload), err
        )
        self._rejected.append(Rejected(message.topic, err.reason, str(err), message.payload, time.time()))
        self._wake.set()
