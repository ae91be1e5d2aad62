"""The gateway: subscribes to its fleet, validates what arrives, and stores it in batches.

Every message is parsed (topic), decoded (size limit first) and checked against its topic (sender,
type, stream). What breaks the contract is refused with a reason: counted, logged and kept in the
store's ``rejected`` table; nothing else is lost. Good telemetry goes to SQLite in batched
transactions; duplicates by (device, epoch, seq) are dropped and counted, and only durable telemetry
(with a seq) is acknowledged. A seq far beyond the highest stored of its seq space, and times before
2000 or ahead of the gateway's clock, are refused as dead letters, so `gateway stats` never counts
absurd gaps. A device's first message in a new seq space (its outbox was reset) is logged and counted.

With ``coap`` in its config the gateway also serves ``POST /ingest`` for CoAP-only devices: an
envelope posted there is checked the same way (its topic is implied by its type and sender), stored in
the same batches, and answered once committed with the seq ranges the gateway holds. Such a device's
status and reported are republished, retained, on its MQTT topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter

from edgekernel.config.models import GatewayConfig
from edgekernel.gateway.seqs import SeqGuard
from edgekernel.gateway.store import (
    DeviceUpdate,
    NewEpoch,
    Rejected,
    Store,
    StoreError,
    TelemetryRecord,
    encode_fields,
)
from edgekernel.link import BrokerLimitError, Message, MqttSession
from edgekernel.link.coap import CoapBadRequest, CoapError, CoapServer, CoapUnavailable, Health
from edgekernel.protocol import (
    CONTENT_TYPES,
    Encoding,
    Envelope,
    EventBody,
    ProtocolError,
    ReportedBody,
    StatusBody,
    TelemetryBody,
    Topic,
    TopicKind,
    check_times,
    decode,
    encode,
    inbound,
    topics,
)
from edgekernel.protocol.bodies import AckBody
from edgekernel.protocol.text import shorten

log = logging.getLogger(__name__)

_NOT_FOR_US = frozenset({TopicKind.DESIRED, TopicKind.ACK, TopicKind.CMD, TopicKind.LOG, TopicKind.AGG})
MIN_PACKET_LIMIT = 1 << 20  # larger packets are dropped by the broker, smaller oversized ones counted here
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
CLOSE_RETRIES = 10
ACK_DRAIN_S = 3.0
FORBIDDEN = "4.03"


class Gateway:
    def __init__(self, config: GatewayConfig, *, member: int = 0) -> None:
        """`member`: which of the gateway's `processes` this is; only member 0 serves CoAP."""
        self.config = config
        self.member = member
        self.fleet = config.fleet
        self.store = Store(config.store.path)
        self.counters: Counter[str] = Counter()
        self._telemetry: list[TelemetryRecord] = []
        self._devices: list[DeviceUpdate] = []
        self._rejected: list[Rejected] = []
        self._last_seen: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # handle() runs in paho's network thread: it and the loop share the pending batch under this lock
        self._lock = threading.Lock()
        self._first_pending: float | None = None
        self._closing = False
        self._via_coap: set[tuple[str, int, int]] = set()
        self._seqs = SeqGuard(self.store.highest, max_jump=config.max_seq_jump, max_rate=config.max_seq_rate)
        self._coap_devices: dict[str, tuple[float, int]] = {}  # device -> (last heard, monotonic; boot)
        self._dead_letters: list[tuple[str, int, int]] = []
        self._acks_in_flight: set[asyncio.Future[None]] = set()
        self._commits: list[asyncio.Future[None]] = []
        self.coap: CoapServer | None = None
        if config.coap is not None and member == 0:
            self.coap = CoapServer(
                config.coap.host,
                config.coap.port,
                ingest=self._ingest_coap,
                refused=self._refused_coap,
                health=self._health,
                max_payload=config.max_payload_bytes,
            )
        everything = topics.fleet_subscription(self.fleet)
        subscriptions = [(everything, 1)]
        share_group = config.effective_share_group
        if share_group is not None:
            subscriptions = [
                (topics.shared(share_group, everything), 1),
                (topics.subscription(self.fleet, TopicKind.STATUS), 1),
                (topics.subscription(self.fleet, TopicKind.REPORTED), 1),
            ]
        self.session = MqttSession(
            config.broker,
            client_id=f"ek-{self.fleet}-gw-{config.gateway}" + (f"-{member}" if member else ""),
            subscriptions=subscriptions,
            # A member of a share group keeps no session: Mosquitto goes on handing a disconnected
            # member with a session its share of the messages until that session expires, whereas
            # without one the others get everything at once (devices resend what was in flight).
            persistent=share_group is None,
            max_packet_bytes=max(4 * config.max_payload_bytes, MIN_PACKET_LIMIT),
            on_message=self.handle,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop`; then disconnect, store everything already received, and close the store."""
        async with contextlib.AsyncExitStack() as stack:
            if self.coap is not None:
                await stack.enter_async_context(self.coap)
                log.info("gateway %s serves CoAP ingest on %s/ingest", self.config.gateway, self.coap.url)
            await self._serve(stop)
        self.store.close()
        log.info("gateway %s stopped: %s", self._name, dict(self.counters))

    async def _serve(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.session.start()
        flusher = asyncio.create_task(self._flush_loop(), name="flush")
        announce = asyncio.create_task(self._announce(), name="announce")
        watch = asyncio.create_task(self._watch_coap_devices(), name="coap-liveness")
        failed = asyncio.create_task(self.session.until_failed(), name="session-failed")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait([failed, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (announce, watch, failed, stopping):
                task.cancel()
            if self.session.connected:  # store and acknowledge what came, while acks can still go out
                with contextlib.suppress(StoreError):
                    await self.flush()
                if self._acks_in_flight:  # paho holds back publishes beyond its in-flight window
                    await asyncio.wait(set(self._acks_in_flight), timeout=ACK_DRAIN_S)
            await self.session.close()
            self._closing = True
            self._wake.set()
            await flusher
            self._settle_commits(CoapUnavailable("the gateway stopped before storing this envelope"))
        if failed.done() and not failed.cancelled() and (err := failed.exception()) is not None:
            raise self._explain(err)

    def _explain(self, err: BaseException) -> BaseException:
        """A broker that cannot do what the config asks, said in the config's words."""
        if isinstance(err, BrokerLimitError) and err.setting == "share_group":
            group = self.config.effective_share_group
            asked = (
                f"share_group {group!r}" if self.config.share_group else f"processes {self.config.processes}"
            )
            return BrokerLimitError(
                f"gateway {self._name}: {asked} needs shared subscriptions (share_group), and {err}; "
                "remove share_group and run one process, or use a broker that offers them",
                setting="share_group",
            )
        return err

    async def _announce(self) -> None:
        await self.session.wait_subscribed()
        filters = ", ".join(topic for topic, _ in self.session.subscriptions)
        log.info("gateway %s subscribed to %s", self._name, filters)

    @property
    def _name(self) -> str:
        return self.config.gateway + (f"/{self.member}" if self.member else "")

    def _mark_pending(self) -> None:
        """Under the lock: the batch wait counts from the first message of a batch."""
        if self._first_pending is None:
            self._first_pending = time.monotonic()

    def _wake_soon(self) -> None:
        """From any thread, after queueing under the lock: wake the flusher, once per burst."""
        if not self._wake_pending and self._loop is not None and not self._loop.is_closed():
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def pending(self) -> int:
        return len(self._telemetry) + len(self._devices) + len(self._rejected) + len(self._last_seen)

    async def _flush_loop(self) -> None:
        wait_s = self.config.store.batch_wait_ms / 1000.0
        retry_s = RETRY_MIN_S
        closing_failures = 0
        while True:
            self._wake_pending = False
            self._wake.clear()
            if not self.pending:
                if self._closing:
                    return
                await self._wake.wait()
                continue
            waited = time.monotonic() - (self._first_pending or time.monotonic())
            if len(self._telemetry) < self.config.store.batch_max and not self._closing and waited < wait_s:
                await asyncio.sleep(wait_s - waited)
            try:
                await self.flush()
                retry_s = RETRY_MIN_S
            except StoreError as err:
                self.counters["store_failures"] += 1
                log.error(
                    "store write failed (%d messages kept for a retry in %.1fs): %s",
                    self.pending,
                    retry_s,
                    err,
                )
                closing_failures += self._closing
                if closing_failures >= CLOSE_RETRIES:
                    log.error("giving up at shutdown: %d messages were not stored", len(self._telemetry))
                    self.counters["lost_at_shutdown"] += len(self._telemetry)
                    return
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
            except Exception:  # a bug must not stop the storing for good: what was stored is re-sent
                self.counters["flush_errors"] += 1
                log.exception("flush failed")
                await asyncio.sleep(retry_s)

    async def flush(self) -> None:
        """Write what is pending in one transaction; on failure it stays pending for the next try."""
        with self._lock:
            telemetry, devices, rejected, seen = (
                self._telemetry,
                self._devices,
                self._rejected,
                self._last_seen,
            )
            self._telemetry, self._devices, self._rejected, self._last_seen = [], [], [], {}
            commits, via_coap, dead_letters = self._commits, self._via_coap, self._dead_letters
            self._commits, self._via_coap, self._dead_letters = [], set(), []
            self._first_pending = None
        updates = devices + [DeviceUpdate(device, at) for device, at in seen.items()]
        if not (telemetry or updates or rejected):
            self._settle(commits)
            return
        try:
            result = await asyncio.to_thread(self.store.write, telemetry, updates, rejected)
        except StoreError:
            with self._lock:
                self._telemetry = telemetry + self._telemetry
                self._devices = devices + self._devices
                self._rejected = rejected + self._rejected
                for device, at in seen.items():
                    self._last_seen[device] = max(at, self._last_seen.get(device, at))
                self._commits = commits + self._commits
                self._via_coap |= via_coap
                self._dead_letters = dead_letters + self._dead_letters
                self._mark_pending()
            raise
        self.counters["stored"] += result.stored
        self.counters["duplicates"] += result.duplicates
        self.counters["samples_stored"] += result.samples
        self._settle(commits)
        self._announce_epochs(result.new_epochs)
        held = [
            (r.device, r.epoch, r.seq)
            for r in telemetry
            if r.seq is not None and (r.device, r.epoch, r.seq) not in via_coap
        ]
        self._acknowledge(held + dead_letters)

    def _announce_epochs(self, new_epochs: tuple[NewEpoch, ...]) -> None:
        for new in new_epochs:
            self.counters["new_epochs"] += 1
            log.warning(
                "%s started a new seq space (epoch %d; its outbox was reset): seq space %d ended at seq %d "
                "with %d missing",
                new.device,
                new.epoch,
                new.previous,
                new.previous_highest,
                new.previous_gaps,
            )

    @staticmethod
    def _settle(commits: list[asyncio.Future[None]], error: Exception | None = None) -> None:
        for commit in commits:
            if commit.done():
                continue
            if error is None:
                commit.set_result(None)
            else:
                commit.set_exception(error)

    def _settle_commits(self, error: Exception) -> None:
        commits, self._commits = self._commits, []
        self._settle(commits, error)

    def _acknowledge(self, held: list[tuple[str, int, int]]) -> None:
        """Tell each device which seqs of which seq space are now held durably (stored now or before:
        duplicates too, and dead letters)."""
        by_space: dict[tuple[str, int], list[int]] = {}
        for device, epoch, seq in held:
            by_space.setdefault((device, epoch), []).append(seq)
        for (device, epoch), seqs in by_space.items():
            if not self.session.connected:
                self.counters["acks_deferred"] += 1  # the device re-sends; its duplicate is acked then
                continue
            for ack in AckBody.split(seqs, epoch):
                future = self.session.publish_nowait(
                    topics.ack(self.fleet, device),
                    encode(ack.to_envelope(self.config.gateway)),
                    qos=1,
                    content_type=CONTENT_TYPES[Encoding.JSON],
                )
                self._acks_in_flight.add(future)
                future.add_done_callback(self._count_ack)
                self.counters["acks_sent"] += 1

    def _count_ack(self, future: asyncio.Future[None]) -> None:
        self._acks_in_flight.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.counters["acks_failed"] += 1

    def handle(self, message: Message) -> None:
        """Validate one message and queue what it carries for the next batch (in paho's thread, or any)."""
        with self._lock:
            self._handle(message)
            self._mark_pending()
        self._wake_soon()

    def _handle(self, message: Message) -> None:
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
            received = inbound(topic, message.payload, max_size=self.config.max_payload_bytes)
            self._accept(received.topic, received.envelope, message.received_at)
        except ProtocolError as err:
            self._refuse(message, err, dead_letter=self._dead_letter(message.topic, message.payload))

    def _dead_letter(self, topic_text: str, payload: bytes) -> tuple[str, int, int] | None:
        """(device, epoch, seq) when a refused message is a device's own durable telemetry envelope (too
        large, a body that breaks the contract, a bad time or seq): no resend can make it pass, so it is
        kept whole in the rejected table and acknowledged, and the device stops sending it."""
        try:
            topic = topics.parse(topic_text) if topic_text != COAP_INGEST_TOPIC else None
            envelope = decode(payload, max_size=max(4 * self.config.max_payload_bytes, MIN_PACKET_LIMIT))
        except ProtocolError:
            return None
        if envelope.seq is None or envelope.type not in ("telemetry", "event"):
            return None
        if topic is not None and (
            topic.fleet != self.fleet
            or topic.kind is not _NAMED_BY[envelope.type][0]
            or topic.device != envelope.src
        ):
            return None
        return envelope.src, envelope.seq_space, envelope.seq

    def _accept(self, topic: Topic, envelope: Envelope, received_at: float) -> None:
        skew = self.config.max_clock_skew_s
        if topic.kind is TopicKind.TELEMETRY:
            body = TelemetryBody.from_envelope(envelope)
            if body.stream != topic.name:
                raise ProtocolError("stream-mismatch", f"stream {body.stream!r} on topic of {topic.name!r}")
            check_times(envelope, (s.ts for s in body.samples), now=time.time(), skew_s=skew)
            if envelope.seq is not None:
                self._seqs.check(topic.device, envelope.seq_space, envelope.seq, received_at)
            samples = tuple((s.ts, *encode_fields(s.value)) for s in body.samples)
            self._telemetry.append(
                TelemetryRecord(
                    topic.device,
                    body.stream,
                    envelope.seq,
                    envelope.ts,
                    received_at,
                    samples,
                    envelope.seq_space,
                )
            )
            self._seen(topic.device, received_at)
            self._count_accepted(topic)
            return
        check_times(envelope, now=time.time(), skew_s=skew)
        if topic.kind is TopicKind.EVENTS:
            self._accept_event(topic, envelope, received_at)
            return
        if topic.kind is TopicKind.STATUS:
            status = StatusBody.from_envelope(envelope)
            self._devices.append(
                DeviceUpdate(
                    topic.device,
                    received_at,
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
                    received_at,
                    reported=reported.model_dump_json(),
                    reported_ts=envelope.ts,
                )
            )
        self._count_accepted(topic)

    def _accept_event(self, topic: Topic, envelope: Envelope, received_at: float) -> None:
        """An event is stored, and acknowledged when it has a seq (it came through the device's outbox),
        in the same seq space as the device's telemetry."""
        event = EventBody.from_envelope(envelope)
        if event.type != topic.name:
            raise ProtocolError("event-mismatch", f"event {event.type!r} on the topic of {topic.name!r}")
        if envelope.seq is not None:
            self._seqs.check(topic.device, envelope.seq_space, envelope.seq, received_at)
        self._telemetry.append(
            TelemetryRecord(
                topic.device,
                f"events/{event.type}",
                envelope.seq,
                envelope.ts,
                received_at,
                (),
                envelope.seq_space,
                event=event.model_dump_json(exclude_none=True),
            )
        )
        self.counters["events"] += 1
        self._seen(topic.device, received_at)
        self._count_accepted(topic)

    def _count_accepted(self, topic: Topic) -> None:
        self.counters[f"accepted:{topic.kind.value}"] += 1

    def _seen(self, device: str, at: float) -> None:
        self._last_seen[device] = at

    # -- CoAP ------------------------------------------------------------------------------

    async def _ingest_coap(self, envelope: Envelope) -> AckBody | None:
        """One envelope from a CoAP-only device (decoded and checked by the resource): queued like an
        MQTT message, answered once its batch is committed."""
        if self._closing:
            raise CoapUnavailable("the gateway is stopping")
        allowed = self.config.coap.devices if self.config.coap is not None else None
        if allowed is not None and envelope.src not in allowed:
            err = ProtocolError("not-allowed", f"{envelope.src!r} is not a CoAP device of this gateway")
            with self._lock:
                self._refuse(Message(COAP_INGEST_TOPIC, b"", 1, False), err, acknowledge=False)
            self._wake_soon()
            raise CoapError(str(err), code=FORBIDDEN)
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self.counters["received"] += 1
            self.counters["received:coap"] += 1
            try:
                topic = _implied_topic(self.fleet, envelope)
                if topic.kind is TopicKind.LOG:
                    self.counters["ignored"] += 1
                    return None
                self._accept(topic, envelope, time.time())
            except ProtocolError as err:  # the resource checked the envelope; these are the gateway's own
                whole = (envelope.src, envelope.seq_space, envelope.seq) if envelope.seq is not None else None
                refused = Message(COAP_INGEST_TOPIC, encode(envelope), 1, False)
                self._refuse(refused, err, dead_letter=whole, acknowledge=False)
                raise CoapBadRequest(f"{err.reason}: {err}") from err
            self._heard(topic.device, envelope)
            if topic.kind in (TopicKind.TELEMETRY, TopicKind.EVENTS) and envelope.seq is not None:
                self._via_coap.add((topic.device, envelope.seq_space, envelope.seq))
            self._commits.append(commit)
            self._mark_pending()
        if topic.kind in (TopicKind.STATUS, TopicKind.REPORTED):
            self._bridge(topic, envelope)
        self._wake_soon()
        await commit
        return AckBody.of([envelope.seq], envelope.seq_space) if envelope.seq is not None else None

    def _heard(self, device: str, envelope: Envelope) -> None:
        """A CoAP-only device is alive; one that said goodbye (status offline) is no longer watched."""
        boot = self._coap_devices.get(device, (0.0, 0))[1]
        if envelope.type == "status":
            status = StatusBody.from_envelope(envelope)
            if not status.online:
                self._coap_devices.pop(device, None)
                return
            boot = status.boot
        self._coap_devices[device] = (time.monotonic(), boot)

    async def _watch_coap_devices(self) -> None:
        """CoAP has no Last Will: a CoAP-only device silent for offline_after_s is marked offline here,
        in the store and retained on its status topic, as the broker would for an MQTT device."""
        if self.config.coap is None or self.coap is None:
            return
        limit = self.config.coap.offline_after_s
        while True:
            await asyncio.sleep(min(5.0, limit / 4))
            now = time.monotonic()
            for device, (heard, boot) in list(self._coap_devices.items()):
                if now - heard < limit:
                    continue
                del self._coap_devices[device]
                status = StatusBody(online=False, boot=boot).to_envelope(device)
                with self._lock:
                    self._devices.append(DeviceUpdate(device, time.time(), online=False, status_ts=status.ts))
                    self._mark_pending()
                    self.counters["coap_offline"] += 1
                self._wake_soon()
                self._bridge(Topic(self.fleet, device, TopicKind.STATUS), status)
                log.warning("%s has not posted over CoAP for %.0f s: marked offline", device, now - heard)

    def _bridge(self, topic: Topic, envelope: Envelope) -> None:
        """A CoAP-only device's status and reported go on its MQTT topics, retained, as if it had
        published them, so the fleet and users' own tools see it like any other device."""
        if not self.session.connected:
            self.counters["bridge_skipped_offline"] += 1
            return
        future = self.session.publish_nowait(
            str(topic), encode(envelope), qos=1, retain=True, content_type=CONTENT_TYPES[Encoding.JSON]
        )
        future.add_done_callback(self._count_bridge)
        self.counters["bridged"] += 1

    def _count_bridge(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.counters["bridge_failed"] += 1

    def _refused_coap(self, payload: bytes, err: ProtocolError) -> None:
        """The device frees an envelope refused with 4.xx; a dead letter keeps it whole here."""
        message = Message(COAP_INGEST_TOPIC, payload, 1, False, received_at=time.time())
        dead_letter = self._dead_letter(COAP_INGEST_TOPIC, payload)
        with self._lock:
            self._refuse(message, err, dead_letter=dead_letter, acknowledge=False)
            self._mark_pending()
        self._wake_soon()

    def _health(self) -> Health:
        keep = ("received", "stored", "duplicates", "rejected", "received:coap", "store_failures")
        return Health(
            status="ok" if not self.counters["store_failures"] else "degraded",
            counters={f"gateway.{key}": self.counters[key] for key in keep},
        )

    def _refuse(
        self,
        message: Message,
        err: ProtocolError,
        *,
        dead_letter: tuple[str, int, int] | None = None,
        acknowledge: bool = True,
    ) -> None:
        self.counters[f"rejected:{err.reason}"] += 1
        self.counters["rejected"] += 1
        log.warning(
            "refused message on %s [%s, %d bytes]: %s",
            shorten(message.topic),
            err.reason,
            len(message.payload),
            err,
        )
        whole = dead_letter is not None
        self._rejected.append(
            Rejected(message.topic, err.reason, str(err), message.payload, time.time(), whole=whole)
        )
        if dead_letter is not None:
            self.counters["dead_letters"] += 1
            if acknowledge:
                self._dead_letters.append(dead_letter)


_NAMED_BY = {"telemetry": (TopicKind.TELEMETRY, "stream"), "event": (TopicKind.EVENTS, "type")}
COAP_INGEST_TOPIC = "coap:/ingest"  # what the rejected table names as the topic of a refused CoAP post


def _implied_topic(fleet: str, envelope: Envelope) -> Topic:
    """The topic an envelope posted over CoAP would have had over MQTT."""
    if envelope.type in _NAMED_BY:
        kind, key = _NAMED_BY[envelope.type]
        name = envelope.body.get(key)
        return Topic(fleet, envelope.src, kind, name if isinstance(name, str) else None)
    return Topic(fleet, envelope.src, TopicKind(envelope.type))
