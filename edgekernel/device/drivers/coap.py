"""The `coap` driver: observes a remote CoAP resource (a sensor, another device's /telemetry/{stream}).

Each notification's payload is JSON, CBOR or a number (`path` points at the value), or an edgekernel
telemetry envelope whose samples are taken as they are. A payload that does not fit is counted and
skipped. When the observation ends, fails, or stays silent past `silence_s`, the driver registers
again after `retry_s`, and counts it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from edgekernel.device.drivers.base import PushQueue
from edgekernel.device.drivers.payload import PayloadError, PayloadSpec, decode
from edgekernel.link.coap.client import CoapClient
from edgekernel.link.errors import CoapError

log = logging.getLogger(__name__)


class CoapDriverConfig(PayloadSpec):
    url: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        description="coap://HOST:PORT/PATH of the resource to observe"
    )
    silence_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = Field(
        60.0, description="register again when no notification came for this long"
    )
    retry_s: Annotated[float, Field(ge=0.05, le=3600, allow_inf_nan=False)] = Field(
        1.0, description="wait before registering again after a loss"
    )
    timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0
    queue: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @field_validator("url")
    @classmethod
    def _coap_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "coap" or not parts.hostname:
            raise ValueError(f"url {url!r} must be coap://HOST[:PORT]/PATH")
        return url


class CoapSource(PushQueue):
    Config = CoapDriverConfig

    def __init__(self, config: CoapDriverConfig, *, rate_hz: float, t0: float) -> None:
        super().__init__(config.queue)
        self.config = config
        self.notifications = 0
        self.bad_payloads = 0
        self.registrations = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        async with CoapClient(timeout=self.config.timeout_s) as client:
            while True:
                try:
                    await self._observe(client)
                except CoapError as err:
                    self.last_error = str(err)
                    log.info("%s: observation lost: %s", self.config.url, err)
                except TimeoutError:
                    self.last_error = f"silent for {self.config.silence_s:g} s"
                await asyncio.sleep(self.config.retry_s)

    async def _observe(self, client: CoapClient) -> None:
        self.registrations += 1
        async with client.observe(self.config.url) as observation:
            while True:
                async with asyncio.timeout(self.config.silence_s):
                    try:
                        response = await anext(observation)
                    except StopAsyncIteration:
                        return
                self.notifications += 1
                try:
                    for ts, value in self.config.samples(decode(response.payload, response.content_format)):
                        self.put(value, ts)
                except PayloadError as err:
                    self.bad_payloads += 1
                    self.last_error = str(err)
