"""The two content formats CoAP resources speak, JSON (50) and CBOR (60), as plain data codecs.

Envelopes go through `edgekernel.protocol`; this is for the other bodies (health, inference, acks).
Decoding raises only `ProtocolError`, with the reason ``bad-json`` or ``bad-cbor``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import cbor2

from edgekernel.protocol import Encoding, ProtocolError
from edgekernel.protocol.codec import CBOR_ERRORS

CONTENT_FORMATS: Final[Mapping[Encoding, int]] = MappingProxyType({Encoding.JSON: 50, Encoding.CBOR: 60})
_ENCODINGS: Final = {number: encoding for encoding, number in CONTENT_FORMATS.items()}
SUPPORTED: Final = "50 (application/json) or 60 (application/cbor)"


def encoding_of(content_format: int | None) -> Encoding | None:
    """The encoding of a Content-Format or Accept number, or None if it is neither JSON nor CBOR."""
    return None if content_format is None else _ENCODINGS.get(int(content_format))


def dumps(data: object, encoding: Encoding) -> bytes:
    """Encode plain data; JSON refuses NaN and infinities with a ValueError (CBOR carries them)."""
    if encoding is Encoding.JSON:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return bytes(cbor2.dumps(data))


def loads(payload: bytes, encoding: Encoding) -> object:
    if encoding is Encoding.JSON:
        try:
            return json.loads(payload, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            raise ProtocolError("bad-json", f"not JSON: {err}") from None
    stream = io.BytesIO(payload)
    try:
        data: object = cbor2.CBORDecoder(stream).decode()
    except CBOR_ERRORS as err:
        raise ProtocolError("bad-cbor", f"not CBOR: {err}") from None
    if (extra := len(payload) - stream.tell()) > 0:
        raise ProtocolError("bad-cbor", f"{extra} bytes after the CBOR item")
    return data


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")
