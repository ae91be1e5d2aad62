"""The fleet registry: what every device last said on its retained ``status`` and ``reported``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, replace

from edgekernel.config.models import BrokerConfig
from edgekernel.link import Message, MqttSession
from edgekernel.protocol import ProtocolError, ReportedBody, StatusBody, TopicKind, decode, topics
from edgekernel.protocol.text import shorten

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceView:
    device: str
    online: bool | None = None
    boot: int | None = None
    status_ts: float | None = None
    reported: ReportedBody | None = None
    reported_ts: float | None = None

    @property
    def last_seen(self) -> float | None:
        times = [t for t in (self.status_ts, self.reported_ts) if t is not None]
        return max(times) if times else None


class Registry:
    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.devices: dict[str, DeviceView] = {}
        self.counters: Counter[str] = Counter()

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        return [
            (topics.subscription(self.fleet, TopicKind.STATUS), 1),
            (topics.subscription(self.fleet, TopicKind.REPORTED), 1),
        ]

    def apply(self, message: Message) -> None:
        """Fold one status or reported message into the view; refuse and count bad ones."""
        try:
            topic = topics.parse(message.topic)
            if not message.payload:
                self.devices.pop(topic.device, None)
                return
            envelope = decode(message.payload)
            if envelope.src != topic.device:
                raise ProtocolError("src-mismatch", f"envelope from {envelope.src!r}")
            view = self.devices.get(topic.device) or DeviceView(topic.device)
            if topic.kind is TopicKind.STATUS:
                status = StatusBody.from_envelope(envelope)
                view = replace(view, online=status.online, boot=status.boot, status_ts=envelope.ts)
            elif topic.kind is TopicKind.REPORTED:
                view = replace(view, reported=ReportedBody.from_envelope(envelope), reported_ts=envelope.ts)
            else:
                return
        except ProtocolError as err:
            self.counters[f"rejected:{err.reason}"] += 1
            log.warning("ignored bad message on %s: %s", shorten(message.topic), err)
            return
        self.devices[topic.device] = view


async def snapshot(
    broker: BrokerConfig, fleet: str, *, settle_s: float = 0.4, timeout: float = 5.0
) -> Registry:
    """Read the retained state of every device of `fleet` from the broker."""
    registry = Registry(fleet)
    session = MqttSession(
        broker,
        client_id=f"ek-{fleet}-cli-{uuid.uuid4().hex[:8]}",
        subscriptions=registry.subscriptions,
        persistent=False,
    )
    async with session:
        await session.wait_subscribed(timeout)
        messages = session.messages()
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            while True:
                message = await asyncio.wait_for(anext(messages), settle_s)
                registry.apply(message)
    return registry
