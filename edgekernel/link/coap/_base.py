"""What every edgekernel resource shares: a size limit checked before any block is assembled or any byte
parsed, content negotiation, counters, and errors rendered as responses, so that no request crashes
the server."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, ClassVar

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource

from edgekernel.link.coap._block1 import Block, Block1Assembler, UploadRefused
from edgekernel.link.coap._guard import GuardedPipe
from edgekernel.link.coap.errors import (
    INTERNAL_SERVER_ERROR,
    NOT_ACCEPTABLE,
    REQUEST_ENTITY_TOO_LARGE,
    UNSUPPORTED_CONTENT_FORMAT,
)
from edgekernel.link.coap.formats import CONTENT_FORMATS, SUPPORTED, encoding_of
from edgekernel.link.errors import CoapError
from edgekernel.protocol import Encoding

log = logging.getLogger("edgekernel.link.coap")
TRANSPORTS = ["udp6"]  # plain CoAP over UDP only: aiocoap would otherwise also open TCP, TLS and WebSocket


def code_of(dotted: str) -> Any:
    """aiocoap's code for an error code in dotted form, or 5.00 for anything else."""
    try:
        klass, detail = (int(part) for part in dotted.split("."))
        code = aiocoap.Code(klass * 32 + detail)
    except ValueError:
        return aiocoap.INTERNAL_SERVER_ERROR
    return code if 4 <= klass <= 5 and 0 <= detail < 32 else aiocoap.INTERNAL_SERVER_ERROR


def error_response(err: CoapError) -> Any:
    """An error response: the code, and the diagnostic as a UTF-8 payload without a content format."""
    response = aiocoap.Message(
        code=code_of(err.code or INTERNAL_SERVER_ERROR), payload=err.diagnostic.encode()
    )
    if err.max_age is not None:
        response.opt.max_age = err.max_age
    return response


def content(payload: bytes, encoding: Encoding, code: Any = aiocoap.CONTENT) -> Any:
    return aiocoap.Message(code=code, payload=payload, content_format=CONTENT_FORMATS[encoding])


def request_encoding(request: Any) -> Encoding:
    """The encoding of a request body, from its Content-Format (4.15 when missing or unsupported)."""
    number = request.opt.content_format
    encoding = encoding_of(number)
    if encoding is None:
        given = "no Content-Format" if number is None else f"Content-Format {int(number)}"
        raise CoapError(f"{given}: send {SUPPORTED}", code=UNSUPPORTED_CONTENT_FORMAT)
    return encoding


def response_encoding(request: Any, default: Encoding) -> Encoding:
    """Accept if given (4.06 when unsupported), else the request's own format, else `default`."""
    accept = request.opt.accept
    if accept is None:
        return encoding_of(request.opt.content_format) or default
    encoding = encoding_of(accept)
    if encoding is None:
        raise CoapError(f"cannot answer in format {int(accept)}: accept {SUPPORTED}", code=NOT_ACCEPTABLE)
    return encoding


def _oversize(request: Any, limit: int) -> int | None:
    """The size a request without Block1 announces or has, if it is over `limit`."""
    announced = request.opt.size1
    if announced is not None and announced > limit:
        return int(announced)
    return len(request.payload) if len(request.payload) > limit else None


def _block(request: Any) -> Block:
    option = request.opt.block1
    size1 = request.opt.size1
    return Block(
        option.block_number,
        bool(option.more),
        option.size_exponent,
        bytes(request.payload),
        None if size1 is None else int(size1),
    )


def _refusal(err: UploadRefused) -> Any:
    response = error_response(err)
    if err.size1 is not None:
        response.opt.size1 = err.size1
    return response


class Resource(resource.Resource):  # type: ignore[misc]
    """Base of our resources; `label` names it in the counters (``label:code``).

    Block-wise request bodies are assembled here, by `uploads` (shared by a server's resources), never
    by aiocoap: see `_block1`.
    """

    label: ClassVar[str]

    def __init__(
        self, counters: Counter[str], max_payload: int, *, uploads: Block1Assembler | None = None
    ) -> None:
        super().__init__()
        self.counters = counters
        self.max_payload = max_payload
        self.uploads = uploads if uploads is not None else Block1Assembler(max_body=max_payload)

    async def render_to_pipe(self, pipe: Any) -> None:
        pipe = GuardedPipe(pipe, self.counters)
        request = pipe.request
        if request.opt.block1 is not None:
            pipe.add_response(await self._render_block(request), is_last=True)
            return
        size = _oversize(request, self.max_payload)
        if size is not None:
            refusal = _refusal(
                UploadRefused(
                    f"request of {size} bytes is over the {self.max_payload}-byte limit",
                    code=REQUEST_ENTITY_TOO_LARGE,
                    size1=self.max_payload,
                )
            )
            self._count(refusal)
            pipe.add_response(refusal, is_last=True)
            return
        await super().render_to_pipe(pipe)

    async def _render_block(self, request: Any) -> Any:
        """The answer to one Block1 request: 2.31 Continue, a refusal, or the response to the whole."""
        option = request.opt.block1
        key = (request.remote.blockwise_key, tuple(request.opt.request_tag), tuple(request.opt.uri_path))
        try:
            body = self.uploads.feed(key, _block(request), time.monotonic())
        except UploadRefused as err:
            refusal = _refusal(err)
            self.counters[f"block1-refused:{err.code}"] += 1
            self._count(refusal)
            return refusal
        if body is None:
            response = aiocoap.Message(code=aiocoap.CONTINUE)
            response.opt.block1 = option
            return response
        whole = request.copy(payload=body, block1=None)
        response = await self._block2.extract_or_insert(whole, lambda: self.render(whole))
        response.opt.block1 = option
        return response

    async def render(self, request: Any) -> Any:
        try:
            response = await super().render(request)
        except CoapError as err:
            response = error_response(err)
        except aiocoap.error.RenderableError as err:
            response = err.to_message()
        except Exception:
            log.exception("CoAP %s %s failed", request.code, self.label)
            response = error_response(CoapError(f"{self.label} failed on the server"))
        self._count(response)
        return response

    def _count(self, response: Any) -> None:
        self.counters[f"{self.label}:{response.code.dotted}"] += 1
