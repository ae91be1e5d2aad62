"""`CoapServer`: edgekernel's resources on one UDP address, for as long as an ``async with`` lasts."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource

from edgekernel.link.coap._base import TRANSPORTS
from edgekernel.link.coap._block1 import Block1Assembler
from edgekernel.link.coap._guard import guard_datagrams
from edgekernel.link.coap.infer import InferHandler, InferSite
from edgekernel.link.coap.ingest import IngestHandler, IngestResource, RefusedHandler
from edgekernel.link.coap.resources import (
    HealthProvider,
    HealthResource,
    TelemetryResource,
    WellKnownCore,
)
from edgekernel.link.errors import CoapError
from edgekernel.protocol import DEFAULT_MAX_PAYLOAD, Encoding, Envelope, ProtocolError
from edgekernel.protocol.topics import check_id


class CoapServer:
    """Serves ``/.well-known/core`` and ``/health`` always, ``/telemetry/{stream}`` for each stream
    published (or named in `streams`), ``POST /infer/{model}`` when given an `infer` handler (`models`
    lists the names for ``/.well-known/core``), and ``POST /ingest`` when given an `ingest` handler
    (`refused` hears of each envelope it refuses).

    Port 0 binds a free port; `port` and `url` tell which. Requests over `max_payload` bytes are
    refused with 4.13 before any block is assembled, and block-wise bodies are assembled per
    (remote, Request-Tag, resource), refusing rather than merging uploads it cannot tell apart.
    Responses use the request's Accept, else its Content-Format, else `encoding` (CBOR, as the wire
    contract has it on CoAP); ``/health`` answers JSON unless asked for CBOR with Accept 60.

        async with CoapServer("127.0.0.1", 0, infer=kernel_infer) as server:
            server.publish("temp", envelope)
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: HealthProvider | None = None,
        infer: InferHandler | None = None,
        models: Callable[[], Iterable[str]] | None = None,
        ingest: IngestHandler | None = None,
        refused: RefusedHandler | None = None,
        streams: Iterable[str] = (),
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        encoding: Encoding = Encoding.CBOR,
    ) -> None:
        self.host = host
        self._port = port
        self.max_payload = max_payload
        self.encoding = encoding
        self.counters: Counter[str] = Counter()
        self._context: Any = None
        self._telemetry: dict[str, TelemetryResource] = {}
        uploads = Block1Assembler(max_body=max_payload)  # one limit on open uploads for the whole server
        self._site: Any = _Site()
        self._site.add_resource([".well-known", "core"], WellKnownCore(self._site))
        # /health is read by people and monitors: JSON unless asked for CBOR (Accept 60)
        self._health = HealthResource(self.counters, max_payload, provider=health, default=Encoding.JSON)
        self._site.add_resource(["health"], self._health)
        if infer is not None:
            self._site.add_resource(
                ["infer"],
                InferSite(self.counters, max_payload, handler=infer, models=models, uploads=uploads),
            )
        if ingest is not None:
            ingest_resource = IngestResource(
                self.counters, max_payload, handler=ingest, refused=refused, uploads=uploads
            )
            self._site.add_resource(["ingest"], ingest_resource)
        for stream in streams:
            self._stream(stream)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self._port}"

    def publish(self, stream: str, envelope: Envelope) -> None:
        """Make `envelope` the latest of `stream` and notify its observers (from the event loop's thread)."""
        if envelope.type != "telemetry":
            raise ProtocolError("wrong-type", f"a {envelope.type} envelope on telemetry stream {stream!r}")
        self._stream(stream).publish(envelope)
        self.counters["telemetry-published"] += 1

    def _stream(self, stream: str) -> TelemetryResource:
        found = self._telemetry.get(stream)
        if found is None:
            check_id(stream, "stream")
            found = TelemetryResource(self.counters, self.max_payload, default=self.encoding)
            self._telemetry[stream] = found
            self._site.add_resource(["telemetry", stream], found)
        return found

    async def __aenter__(self) -> Self:
        await self._check_bindable()
        try:
            self._context = await aiocoap.Context.create_server_context(
                self._site, bind=(self.host, self._port), transports=TRANSPORTS
            )
        except (OSError, aiocoap.error.Error) as err:
            raise CoapError(f"cannot serve CoAP on {self.url}: {err}") from err
        guard_datagrams(self._context, self.counters)
        if self._port == 0:
            self._port = _bound_port(self._context)
        self._health.restart_clock()
        for telemetry in self._telemetry.values():
            telemetry.closing = False
        return self

    async def _check_bindable(self) -> None:
        """Bind the address once ourselves: aiocoap leaks its socket when binding fails, and since it sets
        SO_REUSEPORT it would silently share a port that another server holds."""
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(
                self.host,
                self._port,
                family=socket.AF_INET6,
                type=socket.SOCK_DGRAM,
                flags=socket.AI_V4MAPPED,
            )
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                probe.bind(found[0][4])
        except OSError as err:
            raise CoapError(f"cannot serve CoAP on {self.url}: {err}") from err

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context, self._context = self._context, None
        if context is None:
            return
        for telemetry in self._telemetry.values():
            telemetry.close()
        await asyncio.sleep(0)  # lets each observation send its last notification before the socket closes
        await context.shutdown()


class _Site(resource.Site):  # type: ignore[misc]
    """aiocoap's site, with a 4.04 that says what is missing (aiocoap's own has no diagnostic)."""

    async def render_to_pipe(self, pipe: Any) -> None:
        path = "/".join(pipe.request.opt.uri_path)
        try:
            await super().render_to_pipe(pipe)
        except aiocoap.error.NotFound as err:
            if err.message:
                raise
            raise aiocoap.error.NotFound(
                f"no resource at /{path}: GET /.well-known/core lists them"
            ) from None


def _bound_port(context: Any) -> int:
    """The port the OS chose; aiocoap keeps it in its UDP transport, which it does not expose."""
    for interface in context.request_interfaces:
        transport = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        local_port = getattr(transport, "_local_port", None)
        if local_port is not None:
            return int(local_port())
    raise CoapError("cannot tell which UDP port the CoAP server is bound to")
