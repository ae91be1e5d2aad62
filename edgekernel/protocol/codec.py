"""JSON and CBOR codecs for the envelope. Size is checked before any parsing; decoding raises only
`ProtocolError`."""

from __future__ import annotations

import io
from enum import StrEnum

import cbor2
from pydantic import ValidationError

from edgekernel.protocol.envelope import Envelope
from edgekernel.protocol.errors import ProtocolError

DEFAULT_MAX_PAYLOAD = 256 * 1024
# what cbor2 may raise on hostile input, besides its own error
CBOR_ERRORS = (
    cbor2.CBORDecodeError,
    ValueError,
    TypeError,
    LookupError,
    OverflowError,
    RecursionError,
    MemoryError,
)


class Encoding(StrEnum):
    JSON = "json"
    CBOR = "cbor"


CONTENT_TYPES = {Encoding.JSON: "application/json", Encoding.CBOR: "application/cbor"}


def encode(envelope: Envelope, encoding: Encoding = Encoding.JSON) -> bytes:
    if encoding is Encoding.JSON:
        return envelope.model_dump_json(exclude_none=True).encode()
    return cbor2.dumps(envelope.model_dump(mode="python", exclude_none=True))


def detect(payload: bytes) -> Encoding:
    """JSON envelopes start with ``{`` (after optional white space); CBOR maps with a byte 0xa0-0xbf."""
    head = payload.lstrip()[:1]
    return Encoding.JSON if head == b"{" else Encoding.CBOR


def decode(payload: bytes, *, max_size: int = DEFAULT_MAX_PAYLOAD) -> Envelope:
    """Decode an envelope in either encoding, or raise `ProtocolError` saying what is wrong."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError("bad-payload", f"a payload is bytes, not {type(payload).__name__}")
    # len() of a memoryview counts items, not bytes (a view of 8-byte items would pass 8x the limit)
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if size > max_size:
        raise ProtocolError("oversized", f"payload of {size} bytes is over the {max_size}-byte limit")
    if size == 0:
        raise ProtocolError("empty", "payload is empty")
    data = bytes(payload)
    if detect(data) is Encoding.JSON:
        try:
            return Envelope.model_validate_json(data)
        except ValidationError as err:
            raise ProtocolError("bad-envelope", _describe(err)) from None
    return _decode_cbor(data)


def _decode_cbor(data: bytes) -> Envelope:
    stream = io.BytesIO(data)
    try:
        # only strings as map keys: keys crafted to share one hash would make a map take quadratic time
        obj = cbor2.CBORDecoder(stream, strict_hashable_types=True).decode()
    except CBOR_ERRORS as err:
        raise ProtocolError("bad-cbor", f"not a CBOR envelope: {err}") from None
    if (extra := len(data) - stream.tell()) > 0:
        # JSON refuses trailing bytes too; a payload is one envelope and nothing else
        raise ProtocolError("bad-cbor", f"{extra} bytes after the CBOR envelope")
    if not isinstance(obj, dict):
        raise ProtocolError("bad-envelope", f"an envelope is a map, not {type(obj).__name__}")
    if _expanded(obj, len(data)):
        raise ProtocolError(
            "bad-cbor", "shared or string references make the envelope bigger than its payload"
        )
    try:
        return Envelope.model_validate(obj)
    except ValidationError as err:
        raise ProtocolError("bad-envelope", _describe(err)) from None
    except RecursionError:
        raise ProtocolError("bad-envelope", "body is nested too deeply") from None


def _expanded(obj: object, size: int) -> bool:
    """Whether the decoded value holds more than its `size` bytes can: each item takes a byte at
    least, and each string one more per character. Only shared references (tags 28 and 29) and string
    references (tags 256 and 25) break that, by naming again what was sent once: a few hundred bytes
    can stand for a value too big to validate, or a cycle. The walk stops once the bytes are spent."""
    budget = size
    stack = [obj]
    while stack:
        item = stack.pop()
        budget -= 1
        if isinstance(item, str | bytes | bytearray):
            budget -= len(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        if budget < 0:
            return True
    return False


def _describe(err: ValidationError) -> str:
    problems = []
    for item in err.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "envelope"
        problems.append(f"{where}: {item['msg']}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "invalid envelope: " + "; ".join(problems) + more
