"""The `mqtt` driver: samples from a topic on a broker (another vendor's sensor, another program).

Each message's payload is JSON, CBOR or a number; `path` points at the value (see `payload`). A
payload that does not fit is counted in `bad_payloads` and skipped: a sensor that sends one odd
message does not stop the stream. The session reconnects by itself, with a clean start, and
subscribes again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Annotated, Literal

from pydantic import Field, field_validator

from edgekernel.config.models import BrokerConfig
from edgekernel.device.drivers.base import PushQueue
from edgekernel.device.drivers.payload import PayloadError, PayloadSpec, decode
from edgekernel.link import MqttSession

log = logging.getLogger(__name__)
_LEVEL = re.compile(r"^(\+|#|[^+#]*)$")


class MqttDriverConfig(PayloadSpec):
    broker: BrokerConfig = BrokerConfig()
    topic: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        description="the topic (filter) to subscribe to; + and # as in MQTT"
    )
    qos: Literal[0, 1] = 1
    queue: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        10_000, description="samples held between polls; beyond, the oldest are dropped and counted"
    )

    @field_validator("topic")
    @classmethod
    def _filter(cls, topic: str) -> str:
        levels = topic.split("/")
        if not all(_LEVEL.match(level) for level in levels) or "#" in levels[:-1] or "\0" in topic:
            raise ValueError(f"topic {topic!r} is not a valid MQTT topic filter")
        return topic


class MqttSource(PushQueue):
    Config = MqttDriverConfig

    def __init__(self, config: MqttDriverConfig, *, rate_hz: float, t0: float) -> None:
        super().__init__(config.queue)
        self.config = config
        self.received = 0
        self.bad_payloads = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        session = MqttSession(
            self.config.broker,
            client_id=f"ek-driver-{secrets.token_hex(6)}",
            subscriptions=[(self.config.topic, self.config.qos)],
            persistent=False,
        )
        session.start()
        try:
            async for message in session.messages():
                self.received += 1
                self._take(message.payload)
        finally:
            await asyncio.shield(session.close())

    def _take(self, payload: bytes) -> None:
        try:
            for ts, value in self.config.samples(decode(payload)):
                self.put(value, ts)
        except PayloadError as err:
            self.bad_payloads += 1
            if self.last_error is None:
                log.warning(
                    "%s: a payload without a sample: %s (more are only counted)", self.config.topic, err
                )
            self.last_error = str(err)
