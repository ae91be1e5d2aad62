"""What every edgekernel resource shares: a size limit checked before any block is assembled or any byte
parsed, content negotiation, counters, and errors rendered as responses, so that no request crashes
the server."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource

from edgekernel.link.coap.errors import (
    INTERNAL_SERVER_ERROR,
    NOT_ACCEPTABLE,
    REQUEST_ENTITY_INCOMPLETE,
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
    """The size a request announces or has reached, if it is over `limit`."""
    announced = request.opt.size1
    if announced is not None and announced > limit:
        return int(announced)
    block1 = request.opt.block1
    reached = len(request.payload) + (block1.start if block1 is not None else 0)
    return reached if reached > limit else None


class Resource(resource.Resource):  # type: ignore[misc]
    """Base of our resources; `label` names it in the counters (``label:code``)."""

    label: ClassVar[str]

    def __init__(self, counters: Counter[str], max_payload: int) -> None:
        super().__init__()
        self.counters = counters
        self.max_payload = max_payload

    async def render_to_pipe(self, pipe: Any) -> None:
        size = _oversize(pipe.request, self.max_payload)
        if size is not None:
            refusal = error_response(
                CoapError(
                    f"request of {size} bytes is over the {self.max_payload}-byte limit",
                    code=REQUEST_ENTITY_TOO_LARGE,
                )
            )
            refusal.opt.size1 = self.max_payload
            self._count(refusal)
            pipe.add_response(refusal, is_last=True)
            return
        try:
            await super().render_to_pipe(pipe)
        except ValueError:  # aiocoap's Block1 assembly: a block that does not follow the previous one
            refusal = error_response(
                CoapError("block does not follow the previous one", code=REQUEST_ENTITY_INCOMPLETE)
            )
            self._count(refusal)
            pipe.add_response(refusal, is_last=True)

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
