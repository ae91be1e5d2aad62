"""The device kernel: owns the link to the broker, the device state and the sensor streams.

It announces the device (retained ``status`` as birth, Last Will for offline), reports what the box
can do on ``reported``, sends telemetry through its durable outbox, runs inference through the
scheduler, answers signed commands, and refuses bad input on its own topics with a counted reason.

With ``coap`` in its config it also serves its CoAP resources (``/health``, observable
``/telemetry/{stream}``, ``POST /infer/{model}``); with ``coap.gateway_url`` it talks to no broker at
all and posts its envelopes to the gateway's CoAP ``/ingest`` instead, through the same outbox and
acknowledgement (commands need MQTT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from typing import Any

from pydantic import JsonValue

from edgekernel import __version__
from edgekernel.config.models import DeviceConfig, SensorConfig
from edgekernel.device import capabilities
from edgekernel.device.commands import Commands, ping_result
from edgekernel.device.inference import Inference
from edgekernel.device.logsink import MqttLogHandler
from edgekernel.device.models.manager import UnknownModelError
from edgekernel.device.models.runtime import FloatArray, InferenceError, ModelError
from edgekernel.device.scheduler.errors import (
    DeadlineError,
    OverloadError,
    QuotaError,
    SchedulerClosedError,
)
from edgekernel.device.state import DataDirLock, DeviceState
from edgekernel.device.telemetry import FLUSH_AT_STOP_S, SensorStream, flush_all
from edgekernel.link import (
    Message,
    MqttSession,
    Outbox,
    OutboxError,
    OutboxFullError,
    OutboxStorageError,
    Outgoing,
)
from edgekernel.link.coap import (
    CoapBadRequest,
    CoapError,
    CoapNotFound,
    CoapServer,
    CoapUnavailable,
    CoapUplink,
    Health,
)
from edgekernel.protocol import (
    CONTENT_TYPES,
    DEFAULT_MAX_PAYLOAD,
    BacklogSummary,
    Capabilities,
    Encoding,
    Envelope,
    InferenceSummary,
    ModelState,
    ProtocolError,
    ReportedBody,
    StatusBody,
    TelemetryBody,
    TopicKind,
    VerifiedCommand,
    decode,
    encode,
    inbound,
    topics,
)
from edgekernel.protocol.bodies import AckBody, DesiredBody
from edgekernel.protocol.text import shorten

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = (
    4 * DEFAULT_MAX_PAYLOAD
)  # the broker drops bigger packets; smaller oversized ones are counted


class Kernel:
    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.fleet = config.fleet
        self.device = config.device
        self.lock = DataDirLock(config.data_dir)
        self.state = DeviceState(config.data_dir)
        self.counters: Counter[str] = Counter()
        self.desired_generation = 0
        self._content_type = CONTENT_TYPES[config.encoding]
        self._capabilities: Capabilities | None = None
        self.session: MqttSession | CoapUplink
        self.commands: Commands | None = None
        coap = config.coap
        if coap is not None and coap.gateway_url is not None:
            self.session = CoapUplink(
                coap.gateway_url,
                encoding=config.encoding,
                on_ack=self._acked,
                on_refused=self._refused_by_gateway,
                window=coap.window,
                timeout_s=coap.timeout_s,
                reconnect=coap.reconnect,
            )
        else:
            self.session = MqttSession(
                config.broker,
                client_id=f"ek-{self.fleet}-{self.device}",
                subscriptions=[
                    (topics.desired(self.fleet, self.device), 1),
                    (topics.ack(self.fleet, self.device), 1),
                    (topics.subscription(self.fleet, TopicKind.CMD, device=self.device), 1),
                ],
                will=self._will,
                birth=self._birth,
                max_packet_bytes=MAX_PACKET_BYTES,
            )
            self.commands = Commands(
                self.device, self.session, keys=config.fleet_keys, encoding=config.encoding, state=self.state
            )
            self.commands.register("ping", self._ping)
            self.commands.register("stats", self._stats)
        self.coap: CoapServer | None = None
        if coap is not None and coap.serve:
            self.coap = CoapServer(
                coap.host,
                coap.port,
                health=self._health,
                infer=self._coap_infer,
                models=lambda: [spec.name for spec in config.kernel.models],
                streams=[sensor.stream for sensor in config.sensors],
                encoding=Encoding.CBOR,
            )
        self.streams: list[SensorStream] = []
        self.inference = Inference(config.kernel, cache_dir=config.data_dir / "model-cache")
        self.outbox = Outbox(config.data_dir / "outbox.db", config.outbox)
        self._background: set[asyncio.Task[Any]] = set()

    # -- status, birth and will -------------------------------------------------------------

    def _status(self, online: bool) -> Outgoing:
        body = StatusBody(online=online, boot=self.state.boot)
        return Outgoing(
            topics.status(self.fleet, self.device),
            encode(body.to_envelope(self.device), self.config.encoding),
            qos=1,
            retain=True,
            content_type=self._content_type,
        )

    def _will(self) -> Outgoing:
        self.state.next_boot()
        return self._status(online=False)

    def _birth(self) -> Outgoing:
        return self._status(online=True)

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then flush what the sensors hold and say goodbye."""
        self._capabilities = await asyncio.to_thread(capabilities.detect)
        log_handler = MqttLogHandler(self.device, self._publish_log, encoding=self.config.encoding)
        logging.getLogger().addHandler(log_handler)
        try:
            await self._run(stop)
        finally:
            logging.getLogger().removeHandler(log_handler)
            self.lock.release()

    async def _run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.inference.start)  # first: a model that cannot load stops the device
        await self.outbox.start()
        self._check_epoch()
        async with contextlib.AsyncExitStack() as stack:
            if self.coap is not None:
                await stack.enter_async_context(self.coap)
                log.info("%s serves CoAP on %s", self.device, self.coap.url)
            await self._run_tasks(stop)
        await self.outbox.close()
        await asyncio.to_thread(self.inference.stop)
        self.state.close()
        log.info("%s stopped: %s", self.device, dict(self.counters))

    def _check_epoch(self) -> None:
        """Say when the outbox's seq space is not the one the device last used: a new one (the file was
        reset or moved aside; what it held is gone) or an older file put back."""
        epoch, recorded = self.outbox.epoch, self.state.epoch
        if epoch == recorded:
            return
        if recorded and self.outbox.new_epoch:
            self.counters["outbox_reset"] += 1
            log.warning(
                "%s: the outbox %s started empty; its seqs start again at 1 in a new seq space (epoch %d, "
                "was %d), and what the old one held unacknowledged is lost",
                self.device,
                self.outbox.path,
                epoch,
                recorded,
            )
        elif recorded:
            self.counters["outbox_replaced"] += 1
            log.warning(
                "%s: the outbox %s is in seq space %d, not %d as last used: it is another or an older "
                "file; seqs it already handed out may have been used since",
                self.device,
                self.outbox.path,
                epoch,
                recorded,
            )
        self.state.record_epoch(epoch)

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            self.session.start()
            workers = [
                tasks.create_task(self._report_loop(), name="reported"),
                tasks.create_task(self._inbox_loop(), name="inbox"),
                tasks.create_task(self._run_sensors(), name="sensors"),
                tasks.create_task(self._send_loop(), name="outbox"),
                tasks.create_task(self._resend_loop(), name="resend"),
            ]
            await stop.wait()
            for worker in workers:
                worker.cancel()
        await self._flush_at_stop()
        await self.session.close(last=self._status(online=False))

    async def _flush_at_stop(self) -> None:
        """Commit what the sensors hold (sent after the next start if not now), within a bound."""
        lost = await flush_all(self.streams, FLUSH_AT_STOP_S)
        if lost:
            self.counters["samples_lost_at_stop"] += lost
            log.warning("%s: %d samples not committed at the stop: no room in the outbox", self.device, lost)

    async def _run_sensors(self) -> None:
        """Sensors start with the first connection, so a best-effort stream loses nothing at boot."""
        await self.session.wait_connected()
        self.streams = [SensorStream(sensor, self._emit) for sensor in self.config.sensors]
        async with asyncio.TaskGroup() as tasks:
            for stream in self.streams:
                tasks.create_task(stream.run(), name=f"sensor:{stream.config.stream}")

    async def _report_loop(self) -> None:
        """Report on every connection and every reported_interval_s while connected. Over CoAP, which
        has no birth message, the status goes first on every new connection."""
        announced = 0
        while True:
            await self.session.wait_connected()
            if isinstance(self.session, CoapUplink) and self.session.stats.connects != announced:
                announced = self.session.stats.connects
                status = self._status(online=True)
                self._watch(self.session.publish_nowait(status.topic, status.payload, qos=status.qos))
            self.publish_reported()
            await asyncio.sleep(self.config.reported_interval_s)

    def publish_reported(self) -> None:
        caps = self._capabilities or capabilities.detect()
        body = ReportedBody(
            capabilities=caps,
            free_ram_bytes=capabilities.free_ram(),
            load_1m=capabilities.load_1m(),
            streams=[s.stream for s in self.config.sensors],
            labels=dict(self.config.labels),
            software=f"edgekernel {__version__}",
            config_generation=self.desired_generation,
            models=self._model_states(),
            inference=self._inference_summary(),
            backlog=self._backlog(),
        )
        envelope = body.to_envelope(self.device)
        self._watch(
            self.session.publish_nowait(
                topics.reported(self.fleet, self.device),
                encode(envelope, self.config.encoding),
                qos=1,
                retain=True,
                content_type=self._content_type,
            )
        )

    async def infer(
        self,
        agent: str,
        model: str,
        inputs: Sequence[FloatArray],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> list[FloatArray]:
        """Run `model` for `agent` through the scheduler; float32 in, float32 out."""
        return await self.inference.scheduler.infer(
            agent, model, inputs, priority=priority, deadline_s=deadline_s
        )

    def _model_states(self) -> list[ModelState]:
        loaded = {info.name: info for info in self.inference.manager.stats().loaded if not info.draining}
        states = []
        for spec in self.config.kernel.models:
            info = loaded.get(spec.name)
            states.append(
                ModelState(
                    name=spec.name,
                    version=info.version if info else spec.version,
                    runtime=spec.runtime,
                    device=info.device if info else "",
                    loaded=info is not None,
                )
            )
        return states

    def _backlog(self) -> BacklogSummary | None:
        try:
            stats = self.outbox.stats()
        except OutboxError:
            return None
        return BacklogSummary(
            pending=stats.pending,
            pending_bytes=stats.pending_bytes,
            oldest_age_s=round(max(0.0, stats.oldest_age_s), 3),
            dropped=stats.dropped_oldest + stats.dropped_newest,
            dead=stats.dead,
            disk_full=stats.disk_full,
        )

    def _inference_summary(self) -> InferenceSummary:
        stats = self.inference.scheduler.stats()
        total = stats.total
        return InferenceSummary(
            completed=total.completed,
            failed=sum(total.failed.values()),
            rejected=sum(total.rejected.values()),
            queue_depth=stats.queue_depth,
            p95_ms=round(total.timing.turnaround.p95 * 1000, 3),
            mean_batch=round(stats.mean_batch, 3),
        )

    async def _emit(self, sensor: SensorConfig, body: TelemetryBody) -> None:
        """A durable stream's batch is committed to the outbox (the sender publishes it), with a seq of
        the outbox's seq space; a best-effort one goes out at QoS 0 without a seq (nothing is missing
        when it is lost), or not at all while offline."""
        topic = topics.telemetry(self.fleet, self.device, sensor.stream)
        made: list[Envelope] = []

        def payload(seq: int | None) -> bytes:
            envelope = body.to_envelope(
                self.device, seq=seq, epoch=self.outbox.epoch if seq is not None else 0
            )
            made.append(envelope)
            return encode(envelope, self.config.encoding)

        if sensor.best_effort:
            self._watch(
                self.session.publish_nowait(topic, payload(None), qos=0, content_type=self._content_type)
            )
        elif not await self._commit(topic, payload, sensor.stream):
            return
        self.counters["telemetry_sent"] += 1
        self.counters["samples_sent"] += len(body.samples)
        if self.coap is not None and made:
            self.coap.publish(sensor.stream, made[-1])

    async def _commit(self, topic: str, payload: Callable[[int], bytes], stream: str) -> bool:
        """Commits a durable batch to the outbox; a refusal (overflow policy, full or failing disk)
        is counted, not fatal."""
        try:
            await self.outbox.put(topic, payload, stream=stream)
        except OutboxFullError as err:  # drop-newest, or block past its timeout
            self.counters["outbox_refused"] += 1
            log.warning("%s", err)
            return False
        except OutboxStorageError as err:  # refused and counted until the disk recovers
            key = f"outbox_refused:{err.reason}"
            self.counters[key] += 1
            if self.counters[key] % 1000 == 1:
                log.error("%s (%d refused so far)", err, self.counters[key])
            return False
        return True

    async def _resend_loop(self) -> None:
        """When acknowledgements stall (none for resend_after_s with messages in flight, or an older
        message passed over for that long), send what is in flight again from the oldest (the gateway
        drops duplicates). A slow drain whose acknowledgements keep coming is not resent."""
        wait = self.config.outbox.resend_after_s
        while True:
            await asyncio.sleep(min(1.0, wait / 4))
            stats = self.outbox.stats()
            if self.session.connected and stats.in_flight > 0 and stats.ack_wait_s >= wait:
                self.counters["outbox_resends"] += 1
                self.outbox.rewind()

    async def _send_loop(self) -> None:
        """Publish what the outbox holds, in seq order, while connected; after every reconnect start
        again from the oldest message the gateway has not acknowledged (a broker that was killed may
        have lost what it had acknowledged)."""
        seen_connects: int | None = None
        async for message in self.outbox.messages():
            await self.session.wait_connected()
            connects = self.session.stats.connects
            if seen_connects is not None and connects != seen_connects:
                seen_connects = connects
                self.counters["outbox_rewinds"] += 1
                self.outbox.rewind()
                continue
            seen_connects = connects
            self._watch(
                self.session.publish_nowait(
                    message.topic, message.payload, qos=1, content_type=self._content_type
                )
            )

    def _publish_log(self, payload: bytes) -> None:
        if not self.session.connected:
            self.counters["log_dropped_offline"] += 1
            return
        self._watch(
            self.session.publish_nowait(
                topics.log(self.fleet, self.device), payload, qos=0, content_type=self._content_type
            )
        )

    def _watch(self, future: asyncio.Future[None]) -> None:
        future.add_done_callback(self._count_failure)

    def _count_failure(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.counters["publish_failed"] += 1

    # -- what arrives -----------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        async for message in self.session.messages():
            self.handle(message)

    def handle(self, message: Message) -> None:
        """Validate one incoming message; refuse it with a counted reason if it breaks the contract."""
        try:
            topic = topics.parse(message.topic)
            if topic.device != self.device or topic.fleet != self.fleet:
                raise ProtocolError("not-mine", "message for another device", topic=message.topic)
            if topic.kind is TopicKind.DESIRED and not message.payload:
                self.counters["desired_cleared"] += 1
                return
            envelope = inbound(topic, message.payload).envelope
        except ProtocolError as err:
            self.counters[f"rejected:{err.reason}"] += 1
            log.warning("refused message on %s [%s]: %s", shorten(message.topic), err.reason, err)
            return
        self.counters[f"received:{topic.kind.value}"] += 1
        if topic.kind is TopicKind.DESIRED:
            try:
                self.desired_generation = DesiredBody.from_envelope(envelope).generation
            except ProtocolError as err:
                self.counters[f"rejected:{err.reason}"] += 1
                log.warning("refused desired: %s", err)
                return
        elif topic.kind is TopicKind.ACK:
            try:
                ack = AckBody.from_envelope(envelope)
            except ProtocolError as err:
                self.counters[f"rejected:{err.reason}"] += 1
                log.warning("refused ack: %s", err)
                return
            self._free(ack)
        elif topic.kind is TopicKind.CMD and self.commands is not None and topic.name is not None:
            self._spawn(self.commands.handle(message, envelope, topic_name=topic.name))

    def _acked(self, ack: AckBody) -> None:
        """The gateway's answer to a CoAP post: the seq ranges it holds."""
        self.counters["received:ack"] += 1
        self._free(ack)

    def _free(self, ack: AckBody) -> None:
        if ack.seq_space != self.outbox.epoch:  # meant for a seq space this outbox no longer holds
            self.counters["ack_other_epoch"] += 1
            return
        self._spawn(self.outbox.ack([(first, last) for first, last in ack.ranges]))

    def _refused_by_gateway(self, payload: bytes, err: CoapError) -> None:
        """An envelope the gateway refused for good: move it to the outbox's dead letters, so that it
        is not sent again and again, and say so."""
        try:
            seq = decode(payload, max_size=len(payload) + 1).seq
        except ProtocolError:
            seq = None
        self.counters["refused_by_gateway"] += 1
        log.error("the gateway refused envelope seq %s for good: %s", seq, shorten(str(err)))
        if seq is not None:
            self._spawn(self.outbox.bury([(seq, seq)], f"{err.code}: {err.diagnostic}"))

    # -- CoAP -------------------------------------------------------------------------------

    def _health(self) -> Health:
        backlog = self._backlog()
        counters = {f"kernel.{key}": value for key, value in self.counters.items()}
        if backlog is not None:
            counters["outbox.pending"] = backlog.pending
            counters["outbox.dropped"] = backlog.dropped
        counters["link.connected"] = int(self.session.connected)
        return Health(status="ok" if self.session.connected else "offline", counters=counters)

    async def _coap_infer(self, model: str, inputs: list[FloatArray]) -> list[FloatArray]:
        """``POST /infer/{model}`` as the agent "coap"; the scheduler's refusals become CoAP codes."""
        try:
            return await self.infer("coap", model, inputs)
        except UnknownModelError as err:
            raise CoapNotFound(str(err)) from err
        except (OverloadError, QuotaError, DeadlineError, SchedulerClosedError) as err:
            raise CoapUnavailable(str(err)) from err
        except (InferenceError, ModelError) as err:
            raise CoapBadRequest(str(err)) from err

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["background_failed"] += 1
            log.error("%s", task.exception())

    async def _ping(self, command: VerifiedCommand) -> JsonValue:
        return ping_result(command)

    async def _stats(self, command: VerifiedCommand) -> JsonValue:
        """The kernel's, the link's and the scheduler's counters, as plain JSON."""
        session = self.session.stats
        return {
            "device": self.device,
            "boot": self.state.boot,
            "outbox": _plain(asdict(self.outbox.stats())),
            "counters": dict(self.counters),
            "commands": dict(self.commands.counters) if self.commands is not None else {},
            "link": {
                "connected": self.session.connected,
                "connects": session.connects,
                "disconnects": session.disconnects,
                "received": session.received,
                "published": session.published,
                "dropped_qos0_offline": session.dropped_qos0_offline,
                "inbox_backlog": self.session.backlog,
            },
            "models": [state.model_dump(mode="json") for state in self._model_states()],
            "inference": self._inference_summary().model_dump(mode="json"),
        }


def _plain(value: object) -> JsonValue:
    """A dataclass dump as JSON values (seq ranges become lists of pairs)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    ranges = getattr(value, "ranges", None)
    return [list(r) for r in ranges] if ranges is not None else str(value)
