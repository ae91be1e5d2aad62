"""Frames between the kernel and a process agent: a 4-byte big-endian length, then a CBOR map.

Arrays travel as ``{"dtype": "float32", "shape": [...], "data": <bytes>}``. Nothing the child sends is
trusted: frames are size-bounded, decoded without tags that construct objects, and arrays must be
float32 and match their shape. (Never pickle: the kernel would run whatever the child chose.)
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import cbor2
import numpy as np

from edgekernel.device.agents.errors import AgentError

MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class WireError(AgentError):
    """A frame that breaks the kernel–agent protocol (the agent process is then stopped)."""


def encode_frame(message: dict[str, Any]) -> bytes:
    body = cbor2.dumps(message)
    if len(body) > MAX_FRAME:
        raise WireError("-", f"frame of {len(body)} bytes, over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise WireError("-", "the stream ended inside a frame header") from err
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise WireError("-", f"frame of {length} bytes, over {MAX_FRAME}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise WireError("-", "the stream ended inside a frame") from err
    try:
        message = cbor2.loads(body, tag_hook=_no_tags)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as err:
        raise WireError("-", f"undecodable frame: {err}") from err
    if not isinstance(message, dict):
        raise WireError("-", "a frame must hold a map")
    return message


def _no_tags(tag: cbor2.CBORTag, immutable: bool) -> object:
    raise WireError("-", f"CBOR tag {tag.tag} is not allowed")


def pack_array(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    contiguous = np.ascontiguousarray(array, dtype=np.float32)
    return {"dtype": "float32", "shape": list(contiguous.shape), "data": contiguous.tobytes()}


def unpack_array(value: object) -> np.ndarray[Any, np.dtype[np.float32]]:
    if not isinstance(value, dict) or value.get("dtype") != "float32":
        raise WireError("-", "an array must be a float32 map")
    shape, data = value.get("shape"), value.get("data")
    if (
        not isinstance(shape, list)
        or len(shape) > 16
        or not all(isinstance(d, int) and 0 <= d < 2**31 for d in shape)
        or not isinstance(data, bytes)
    ):
        raise WireError("-", "an array needs a shape (list of sizes) and data (bytes)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * 4 != len(data):
        raise WireError("-", f"an array of shape {shape} needs {count * 4} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.float32).reshape(shape).copy()
