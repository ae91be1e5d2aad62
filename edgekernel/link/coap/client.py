"""`CoapClient`: GET, POST, observe, and posting envelopes to a gateway for its acknowledgement."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiocoap  # type: ignore[import-untyped]

from edgekernel.link.coap._base import TRANSPORTS
from edgekernel.link.coap._guard import guard_datagrams
from edgekernel.link.coap.errors import error_for
from edgekernel.link.coap.formats import CONTENT_FORMATS, encoding_of, loads
from edgekernel.link.errors import CoapError
from edgekernel.protocol import DEFAULT_MAX_PAYLOAD, Encoding, Envelope, ProtocolError, decode, encode
from edgekernel.protocol.bodies import AckBody

MAX_DIAGNOSTIC = 1024


@dataclass(frozen=True, slots=True)
class CoapResponse:
    """A successful response: `code` in dotted form ("2.05"), the payload and its Content-Format."""

    code: str
    payload: bytes
    content_format: int | None = None
    max_age: int | None = None

    @property
    def encoding(self) -> Encoding | None:
        return encoding_of(self.content_format)

    def data(self) -> object:
        """The payload decoded as JSON or CBOR, per its Content-Format; `ProtocolError` otherwise."""
        if self.encoding is None:
            raise ProtocolError(
                "bad-format", f"Content-Format {self.content_format} is neither JSON nor CBOR"
            )
        return loads(self.payload, self.encoding)

    def envelope(self, *, max_size: int = DEFAULT_MAX_PAYLOAD) -> Envelope:
        return decode(self.payload, max_size=max_size)


class CoapClient:
    """A CoAP client over UDP, open for as long as its ``async with`` lasts.

    Every method raises `CoapError` (or its subclass for the code: `CoapBadRequest`, `CoapNotFound`,
    `CoapUnavailable`) for an error response, and a `CoapError` whose code is None when no response came
    within `timeout` seconds or the request could not be sent. Large payloads go block-wise both ways;
    each POST carries a Request-Tag of its own, so that concurrent block-wise posts never mix.
    """

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._tags = itertools.count(random.getrandbits(32))
        self.counters: Counter[str] = Counter()
        self._context: Any = None
        self._observations: set[Observation] = set()

    async def __aenter__(self) -> Self:
        try:
            self._context = await aiocoap.Context.create_client_context(transports=TRANSPORTS)
        except (OSError, aiocoap.error.Error) as err:
            raise CoapError(f"cannot open a CoAP client: {err}") from err
        guard_datagrams(self._context, self.counters)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for observation in list(self._observations):
            await observation.aclose()
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()

    async def get(
        self, uri: str, *, accept: Encoding | None = None, timeout: float | None = None
    ) -> CoapResponse:
        message = self._message(aiocoap.GET, uri, accept=accept)
        return await self._exchange(message, uri, timeout)

    async def post(
        self,
        uri: str,
        payload: bytes,
        *,
        content_format: Encoding,
        accept: Encoding | None = None,
        timeout: float | None = None,
    ) -> CoapResponse:
        message = self._message(
            aiocoap.POST, uri, payload=payload, content_format=content_format, accept=accept
        )
        # RFC 9175: a server tells concurrent block-wise uploads from one endpoint apart by Request-Tag
        message.opt.request_tag = [(next(self._tags) % 2**32).to_bytes(4, "big")]
        return await self._exchange(message, uri, timeout)

    async def post_envelope(
        self,
        uri: str,
        envelope: Envelope,
        encoding: Encoding = Encoding.CBOR,
        *,
        timeout: float | None = None,
    ) -> AckBody | None:
        """Post to a gateway's ``/ingest``; return the seq ranges it now holds, or None if it sent none
        (for an envelope without a seq)."""
        return await self.post_encoded(uri, encode(envelope, encoding), encoding, timeout=timeout)

    async def post_encoded(
        self, uri: str, payload: bytes, encoding: Encoding, *, timeout: float | None = None
    ) -> AckBody | None:
        """`post_envelope` for an envelope already encoded as `encoding`."""
        response = await self.post(uri, payload, content_format=encoding, timeout=timeout)
        if not response.payload:
            return None
        try:
            data = response.data()
            if not isinstance(data, dict):
                raise ProtocolError("bad-ack", "an ack is a map")
            return AckBody.model_validate(data)
        except (ProtocolError, ValueError) as err:
            raise CoapError(f"the gateway's ack is not valid: {err}", code=response.code, uri=uri) from err

    def observe(self, uri: str, *, accept: Encoding | None = None) -> Observation:
        """Register an observation; iterate the result with ``async for``, and close it (or use it with
        ``async with``) to end it."""
        message = self._message(aiocoap.GET, uri, accept=accept, observe=0)
        observation = Observation(self._send(message, uri), uri, self.timeout, self._observations.discard)
        self._observations.add(observation)
        return observation

    def _message(
        self,
        code: Any,
        uri: str,
        *,
        payload: bytes = b"",
        content_format: Encoding | None = None,
        accept: Encoding | None = None,
        observe: int | None = None,
    ) -> Any:
        try:
            message = aiocoap.Message(code=code, uri=uri, payload=payload)
        except (ValueError, aiocoap.error.Error) as err:
            raise CoapError(f"not a CoAP URI: {err}", uri=uri) from err
        if content_format is not None:
            message.opt.content_format = CONTENT_FORMATS[content_format]
        if accept is not None:
            message.opt.accept = CONTENT_FORMATS[accept]
        if observe is not None:
            message.opt.observe = observe
        return message

    def _send(self, message: Any, uri: str) -> Any:
        if self._context is None:
            raise CoapError("the client is not open: use it in `async with`", uri=uri)
        return self._context.request(message)

    async def _exchange(self, message: Any, uri: str, timeout: float | None) -> CoapResponse:
        request = self._send(message, uri)
        return _response(await _first(request, uri, self.timeout if timeout is None else timeout), uri)


class Observation:
    """The notifications of an observed resource, as an async iterator.

    The first item is the response to the registration. Notifications without a payload (a stream with
    nothing published yet) are skipped. Like CoAP's observe itself it is lossy: a consumer slower than
    the resource gets the latest representation, not every one. Iteration ends when the server ends the
    observation or the resource is not observable; an error response raises `CoapError`.
    """

    def __init__(self, request: Any, uri: str, timeout: float, forget: Callable[[Observation], None]) -> None:
        self.uri = uri
        self._request = request
        self._updates = request.observation.__aiter__()
        self._timeout = timeout
        self._forget = forget
        self._registered = False
        self._closed = False
        self._pending: asyncio.Future[Any] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> CoapResponse:
        while True:
            response = await self._next()
            if response.payload:
                return response

    async def _next(self) -> CoapResponse:
        if self._closed:
            raise StopAsyncIteration
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._step())
        try:
            # a consumer cancelled while waiting leaves the step running, for its next call to pick up
            message = await asyncio.shield(self._pending)
        except asyncio.CancelledError:
            if self._closed:
                raise StopAsyncIteration from None
            raise
        except CoapError:
            await self.aclose()
            raise
        self._pending = None
        self._registered = True
        if message is None:
            await self.aclose()
            raise StopAsyncIteration
        try:
            return _response(message, self.uri)
        except CoapError:
            await self.aclose()
            raise

    async def _step(self) -> Any:
        if not self._registered:
            return await _first(self._request, self.uri, self._timeout)
        try:
            return await self._updates.__anext__()
        except StopAsyncIteration:
            return None
        except aiocoap.error.Error as err:
            raise _failure(err, self.uri) from err

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        pending, self._pending = self._pending, None
        if pending is not None:
            if pending.done() and not pending.cancelled():
                pending.exception()
            pending.cancel()
        if not self._request.response.done():
            self._request.response.cancel()
        if not self._request.observation.cancelled:
            self._request.observation.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _first(request: Any, uri: str, timeout: float) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await request.response
    except TimeoutError as err:
        raise CoapError(f"no response within {timeout:g} s", uri=uri) from err
    except (OSError, aiocoap.error.Error) as err:
        raise _failure(err, uri) from err


def _failure(err: BaseException, uri: str) -> CoapError:
    return CoapError(str(err) or type(err).__name__, uri=uri)


def _response(message: Any, uri: str) -> CoapResponse:
    code: str = message.code.dotted
    max_age = message.opt.max_age
    if not message.code.is_successful():
        diagnostic = bytes(message.payload[:MAX_DIAGNOSTIC]).decode("utf-8", "replace")
        raise error_for(code, diagnostic, max_age=max_age, uri=uri)
    content_format = message.opt.content_format
    return CoapResponse(
        code=code,
        payload=bytes(message.payload),
        content_format=None if content_format is None else int(content_format),
        max_age=max_age,
    )
