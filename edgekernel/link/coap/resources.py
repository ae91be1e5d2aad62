"""A device's own resources: observable ``/telemetry/{stream}`` and ``/health``."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource

from edgekernel.link.coap._base import Resource, content, error_response, response_encoding
from edgekernel.link.coap.errors import CoapBadRequest, CoapUnavailable
from edgekernel.link.coap.formats import CONTENT_FORMATS, dumps
from edgekernel.protocol import Encoding, Envelope, encode

LINK_CT = " ".join(str(number) for number in CONTENT_FORMATS.values())


@dataclass(frozen=True, slots=True)
class Health:
    """What a program says about itself on ``/health``; the server adds its uptime and CoAP counters."""

    status: str = "ok"
    counters: Mapping[str, int] = field(default_factory=dict)


HealthProvider = Callable[[], Health]


class WellKnownCore(resource.WKCResource):  # type: ignore[misc]
    """aiocoap's ``/.well-known/core``, with a query it cannot apply refused with 4.00 (aiocoap 0.4.17
    fails with a TypeError on filters such as ``?__class__=x``)."""

    def __init__(self, site: Any) -> None:
        super().__init__(site.get_resources_as_linkheader, impl_info=None)

    async def render_get(self, request: Any) -> Any:
        try:
            return await super().render_get(request)
        except Exception as err:
            query = "&".join(request.opt.uri_query)
            return error_response(CoapBadRequest(f"cannot filter links by {query!r}: {err}"))


class HealthResource(Resource):
    label = "health"
    rt = "ek.health"
    ct = LINK_CT

    def __init__(
        self,
        counters: Counter[str],
        max_payload: int,
        *,
        provider: HealthProvider | None,
        default: Encoding,
    ) -> None:
        super().__init__(counters, max_payload)
        self.provider = provider
        self.default = default
        self.started = time.monotonic()

    def restart_clock(self) -> None:
        self.started = time.monotonic()

    async def render_get(self, request: Any) -> Any:
        accept = request.opt.accept
        encoding = self.default if accept is None else response_encoding(request, self.default)
        health = self.provider() if self.provider is not None else Health()
        counters = {f"coap.{key}": value for key, value in sorted(self.counters.items())}
        counters.update(health.counters)
        body = {
            "status": health.status,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "counters": counters,
        }
        return content(dumps(body, encoding), encoding)


class TelemetryResource(Resource, resource.ObservableResource):  # type: ignore[misc]
    """The latest envelope of one stream; observers are notified of each new one.

    Before the first envelope it answers 2.05 with no payload, so a client may observe a stream that
    has not started yet. A notification too large for one datagram goes out block-wise (Block2), with
    an ETag so that a client never assembles blocks of two different envelopes.
    """

    label = "telemetry"
    rt = "ek.telemetry"
    ct = LINK_CT

    def __init__(self, counters: Counter[str], max_payload: int, *, default: Encoding) -> None:
        super().__init__(counters, max_payload)
        self.default = default
        self.latest: Envelope | None = None
        self.closing = False
        self._payloads: dict[Encoding, bytes] = {}

    def publish(self, envelope: Envelope) -> None:
        self.latest = envelope
        self._payloads = {}
        self.updated_state()

    def close(self) -> None:
        """End every observation with a 5.03, so observers know to come back later."""
        self.closing = True
        self.updated_state()

    async def render_get(self, request: Any) -> Any:
        if self.closing:
            raise CoapUnavailable("the server is shutting down")
        encoding = response_encoding(request, self.default)
        if self.latest is None:
            return aiocoap.Message(code=aiocoap.CONTENT)
        payload = self._payloads.get(encoding)
        if payload is None:
            payload = self._payloads[encoding] = encode(self.latest, encoding)
        response = content(payload, encoding)
        response.opt.etag = hashlib.blake2b(payload, digest_size=8).digest()
        if request.opt.observe == 0 and len(payload) > request.remote.maximum_payload_size:
            # aiocoap splits plain GET responses itself, but sends notifications whole

            async def whole() -> Any:
                return response

            return await self._block2.extract_or_insert(request, whole)
        return response
