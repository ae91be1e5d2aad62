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
import functools
import logging
import re
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from typing import Any

from pydantic import JsonValue

from edgekernel import __version__
from edgekernel.config.agents import AgentSpec
from edgekernel.config.models import DeviceConfig, SensorConfig
from edgekernel.device import capabilities, report
from edgekernel.device.agents.host import AgentHost, Ports
from edgekernel.device.agents.lifecycle import Change
from edgekernel.device.commands import CommandError, Commands, ping_result
from edgekernel.device.desired import desired_agents, desired_sensors
from edgekernel.device.inference import Inference
from edgekernel.device.logsink import MqttLogHandler
from edgekernel.device.models.manager import UnknownModelError
from edgekernel.device.models.runtime import FloatArray, InferenceError, ModelError
from edgekernel.device.publisher import Publisher
from edgekernel.device.scheduler.errors import (
    DeadlineError,
    OverloadError,
    QuotaError,
    SchedulerClosedError,
)
from edgekernel.device.sensors import Sensors, check, inject_command
from edgekernel.device.state import DataDirLock, DeviceState
from edgekernel.device.telemetry import FLUSH_AT_STOP_S, flush_all
from edgekernel.link import (
    Message,
    MqttSession,
    Outbox,
    Outgoing,
    PacketTooLargeError,
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
    InferenceSummary,
    ModelState,
    ProtocolError,
    ReportedBody,
    Sample,
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

_DIRECTORIES = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\":]+[/\\])+")  # keeps the file name
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
        self.sensors = Sensors(self._emit)
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
            self.commands.register("agent-restart", self._agent_restart)
            self.commands.register(
                "inject-anomaly", functools.partial(inject_command, self.sensors, self.counters)
            )
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
        check(config.sensors)  # a sensor its driver refuses stops the device before it starts
        self.inference = Inference(config.kernel, cache_dir=config.data_dir / "model-cache")
        self.outbox = Outbox(config.data_dir / "outbox.db", config.outbox)
        self.publisher = Publisher(
            self.fleet,
            self.device,
            encoding=config.encoding,
            session=self.session,
            outbox=self.outbox,
            coap=self.coap,
            counters=self.counters,
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._desired_sensors: list[SensorConfig] | None = None
        self.agents = AgentHost(
            self.device,
            config.data_dir,
            Ports(
                infer=lambda agent, model, inputs, priority, deadline_s: self.infer(
                    agent, model, inputs, priority=priority, deadline_s=deadline_s
                ),
                publish=self._agent_publish,
                event=self.publisher.event,
                sensor_streams=self.sensors.running,
                stats=self._kernel_figures,
                actuate=self._actuate,
            ),
            on_change=self._agent_changed,
        )
        self._desired_agents: list[AgentSpec] = []
        self.sensors.tap = self.agents.bus.publish

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
            await self.agents.apply(self._wanted_agents())
            workers = [
                tasks.create_task(self._report_loop(), name="reported"),
                tasks.create_task(self._inbox_loop(), name="inbox"),
                tasks.create_task(self._run_sensors(), name="sensors"),
                tasks.create_task(self._send_loop(), name="outbox"),
                tasks.create_task(self._resend_loop(), name="resend"),
            ]
            await stop.wait()
            await self.agents.close()
            await self.sensors.close()
            for worker in workers:
                worker.cancel()
        await self._flush_at_stop()
        await self.session.close(last=self._status(online=False))

    async def _flush_at_stop(self) -> None:
        """Commit what the sensors hold (sent after the next start if not now), within a bound."""
        lost = await flush_all(self.sensors.streams, FLUSH_AT_STOP_S)
        if lost:
            self.counters["samples_lost_at_stop"] += lost
            log.warning("%s: %d samples not committed at the stop: no room in the outbox", self.device, lost)

    async def _run_sensors(self) -> None:
        """Sensors start with the first connection, so a best-effort stream loses nothing at boot."""
        await self.session.wait_connected()
        await self.sensors.apply(self._wanted_sensors())

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
            streams=self.sensors.names or [s.stream for s in self._wanted_sensors()],
            labels=dict(self.config.labels),
            software=f"edgekernel {__version__}",
            config_generation=self.desired_generation,
            models=self._model_states(),
            inference=self._inference_summary(),
            backlog=self._backlog(),
            agents=report.agent_reports(self.agents),
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
        return report.model_states(self.config.kernel.models, self.inference)

    def _backlog(self) -> BacklogSummary | None:
        return report.backlog(self.outbox)

    def _inference_summary(self) -> InferenceSummary:
        return report.inference_summary(self.inference)

    async def _emit(self, sensor: SensorConfig, body: TelemetryBody) -> None:
        await self.publisher.telemetry(sensor.stream, body, best_effort=sensor.best_effort)

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
            sent = self.session.publish_nowait(
                message.topic, message.payload, qos=1, content_type=self._content_type
            )
            sent.add_done_callback(functools.partial(self._sent, message.seq))

    def _sent(self, seq: int, future: asyncio.Future[None]) -> None:
        """A message the broker can never take (larger than its Maximum Packet Size, even alone) goes to
        the outbox's dead letters, with reason `too-large`, instead of being sent again and again."""
        if not future.cancelled() and isinstance(future.exception(), PacketTooLargeError):
            self.counters["dead:too-large"] += 1
            log.error("%s: seq %d dead-lettered: %s", self.device, seq, future.exception())
            self._spawn(self.outbox.bury([(seq, seq)], "too-large"))
        else:
            self.publisher.count_failure(future)

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
        self.publisher.watch(future)

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
                desired = DesiredBody.from_envelope(envelope)
                agents = desired_agents(envelope.body)
                sensors = desired_sensors(envelope.body)
            except ProtocolError as err:
                self.counters[f"rejected:{err.reason}"] += 1
                log.warning("refused desired: %s", err)
                return
            self.desired_generation = desired.generation
            self._desired_agents = agents
            self._desired_sensors = sensors
            self._spawn(self.agents.apply(self._wanted_agents()))
            if self.session.connected:  # before the first connection, the sensors start with it
                self._spawn(self.sensors.apply(self._wanted_sensors()))
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
        return report.health(self.counters, self._backlog(), connected=self.session.connected)

    async def _coap_infer(self, model: str, inputs: list[FloatArray]) -> list[FloatArray]:
        """``POST /infer/{model}`` as the agent "coap"; the scheduler's refusals become CoAP codes."""
        try:
            return await self.infer("coap", model, inputs)
        except UnknownModelError as err:
            raise CoapNotFound(str(err)) from err
        except (OverloadError, QuotaError, DeadlineError, SchedulerClosedError) as err:
            raise CoapUnavailable(str(err)) from err
        except (InferenceError, ModelError) as err:
            # a CoAP client learns what is wrong with its request, not where the device keeps its files
            raise CoapBadRequest(f"model {model}: {_DIRECTORIES.sub('', err.detail)}") from err

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["background_failed"] += 1
            log.error("%s", task.exception())

    # -- agents -----------------------------------------------------------------------------

    def _wanted_agents(self) -> list[AgentSpec]:
        """The config's agents, and the fleet's from ``…/desired`` (which win on a shared name)."""
        wanted = {spec.name: spec for spec in self.config.agents}
        wanted.update((spec.name, spec) for spec in self._desired_agents)
        return list(wanted.values())

    def _wanted_sensors(self) -> list[SensorConfig]:
        """The config's sensors, or what ``…/desired`` sets instead (its list replaces the config's)."""
        return list(self.config.sensors if self._desired_sensors is None else self._desired_sensors)

    async def _actuate(self, stream: str, value: float) -> None:
        self.sensors.actuate(stream, value)

    async def _agent_publish(self, stream: str, samples: list[Sample], best_effort: bool) -> bool:
        body = TelemetryBody(stream=stream, samples=samples)
        return await self.publisher.telemetry(stream, body, best_effort=best_effort)

    def _agent_changed(self, change: Change) -> None:
        data: JsonValue = {"state": change.new.value, "from": change.old.value, "reason": change.reason}
        self._spawn(self.publisher.event("agent", change.agent, data))

    def _kernel_figures(self) -> dict[str, float]:
        backlog = self._backlog()
        figures = {"queue_depth": float(self.inference.scheduler.stats().queue_depth)}
        if backlog is not None:
            figures["outbox_pending"] = float(backlog.pending)
        return figures

    async def _agent_restart(self, command: VerifiedCommand) -> JsonValue:
        name = command.args.get("agent")
        if not isinstance(name, str) or not self.agents.restart(name):
            known = ", ".join(sorted(self.agents.supervisor.names)) or "none"
            raise CommandError("unknown-agent", f"no agent {name!r} on this device (agents: {known})")
        return {"agent": name, "restarted": True}

    async def _ping(self, command: VerifiedCommand) -> JsonValue:
        return ping_result(command)

    async def _stats(self, command: VerifiedCommand) -> JsonValue:
        """The kernel's, the link's and the scheduler's counters, as plain JSON."""
        session = self.session.stats
        return {
            "device": self.device,
            "boot": self.state.boot,
            "outbox": report.plain(asdict(self.outbox.stats())),
            "counters": dict(self.counters),
            "commands": dict(self.commands.counters) if self.commands is not None else {},
            "link": {
                "connected": self.session.connected,
                "connects": session.connects,
                "disconnects": session.disconnects,
                "received": session.received,
                "published": session.published,
                "dropped_qos0_offline": session.dropped_qos0_offline,
                "too_large": session.too_large,
                "peak_in_flight": session.peak_in_flight,
                "inbox_backlog": self.session.backlog,
            },
            "models": [state.model_dump(mode="json") for state in self._model_states()],
            "inference": self._inference_summary().model_dump(mode="json"),
            "agents": [agent.model_dump(mode="json") for agent in report.agent_reports(self.agents)],
            "sensors": report.plain(self.sensors.status()),
        }
