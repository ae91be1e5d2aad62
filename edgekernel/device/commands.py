"""Fleet commands on the device: verify, deduplicate, run, reply on the MQTT 5 response topic.

A command is refused with a reason (unsigned, bad-signature, expired, replayed, wrong-target,
name-mismatch: signed as another command than its topic names, …) in
a failure reply when it carries a response topic, and always counted. A command re-sent with the same
id (a reconnect, a retrying caller) gets the first reply again instead of running twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import JsonValue

from edgekernel.device.state import DeviceState, StateError
from edgekernel.link import Message, MqttSession
from edgekernel.protocol import (
    CONTENT_TYPES,
    CommandVerifier,
    Encoding,
    Envelope,
    FleetVerifier,
    ProtocolError,
    ReplyBody,
    ReplyCache,
    VerifiedCommand,
    encode,
)
from edgekernel.protocol.text import shorten

log = logging.getLogger(__name__)

Handler = Callable[[VerifiedCommand], Awaitable[JsonValue]]


class CommandError(Exception):
    """Raised by a handler to fail a command with a reason of its own."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class Commands:
    def __init__(
        self,
        device: str,
        session: MqttSession,
        *,
        keys: list[Path],
        encoding: Encoding = Encoding.JSON,
        state: DeviceState | None = None,
    ) -> None:
        """With `state`, the ids of accepted commands outlive the process (no replay after a restart)."""
        self.device = device
        self.session = session
        self.encoding = encoding
        self.counters: Counter[str] = Counter()
        self.handlers: dict[str, Handler] = {}
        self._replies = ReplyCache()
        self._verifier = CommandVerifier(FleetVerifier.load(*keys), device=device) if keys else None
        self._state = state
        if state is not None and self._verifier is not None:
            for command_id, expires_at in state.accepted_commands(time.time()):
                self._verifier.remember(command_id, expires_at)

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    async def handle(self, message: Message, envelope: Envelope, *, topic_name: str) -> None:
        """Answer a command that came on ``…/cmd/{topic_name}``."""
        cached = self._replies.get(envelope.id, request=envelope)
        if cached is not None and envelope.body.get("name") == topic_name:
            self.counters["duplicate"] += 1
            self._reply(message, cached)
            return
        try:
            if self._verifier is None:
                raise ProtocolError("no-keys", "this device has no fleet key to verify commands with")
            command = self._verifier.verify(envelope, topic_name=topic_name)
            if self._state is not None:
                try:
                    self._state.accept_command(command.id, command.expires_at, time.time())
                except StateError as err:
                    raise ProtocolError("state-error", f"cannot record the command: {err}") from err
        except ProtocolError as err:
            self.counters[f"refused:{err.reason}"] += 1
            log.warning("refused command %s: %s", envelope.id, err)
            self._reply(message, self._failure(envelope.id, err.reason, str(err)))
            return
        reply = await self._run(command)
        self._replies.put(command, reply, request=envelope)
        self._reply(message, reply)

    async def _run(self, command: VerifiedCommand) -> Envelope:
        handler = self.handlers.get(command.name)
        if handler is None:
            self.counters["unknown"] += 1
            known = ", ".join(sorted(self.handlers)) or "none"
            return self._failure(
                command.id, "unknown-command", f"no command {command.name!r} (known: {known})"
            )
        try:
            result = await handler(command)
        except CommandError as err:
            self.counters["failed"] += 1
            return self._failure(command.id, err.reason, str(err))
        except Exception as err:  # a handler's bug must not take the device down
            self.counters["failed"] += 1
            log.exception("command %s failed", command.name)
            return self._failure(command.id, "error", f"{type(err).__name__}: {err}")
        self.counters["ok"] += 1
        return ReplyBody.success(command.id, result).to_envelope(self.device)

    def _failure(self, command: str, reason: str, message: str) -> Envelope:
        return ReplyBody.failure(command, reason, message).to_envelope(self.device)

    def _reply(self, message: Message, reply: Envelope) -> None:
        if not message.response_topic:
            self.counters["no-response-topic"] += 1
            return
        try:
            future = self.session.publish_nowait(
                message.response_topic,
                encode(reply, self.encoding),
                qos=1,
                content_type=CONTENT_TYPES[self.encoding],
                correlation_data=message.correlation_data,
            )
        except ValueError as err:  # paho refuses a response topic with a wildcard; the broker passes it
            self.counters["bad-response-topic"] += 1
            log.warning("cannot reply on %r: %s", shorten(message.response_topic), err)
            return
        future.add_done_callback(lambda f: None if f.cancelled() else f.exception())


def ping_result(command: VerifiedCommand) -> JsonValue:
    return {"pong": True, "device_time": time.time(), "issued_at": command.issued_at}
