"""The envelope every message travels in, as a frozen, self-validating value object."""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from edgekernel.protocol.topics import ID_PATTERN

SCHEMA_VERSION = 1
MAX_SEQ = 2**63 - 1

MessageType = Literal[
    "status", "reported", "desired", "telemetry", "event", "ack", "cmd", "reply", "log", "agg"
]

Id = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
MessageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Envelope(BaseModel):
    """``v`` schema version, ``id`` unique, ``src`` sender id, ``seq`` per-device sequence number
    (only on messages that go through the outbox), ``ts`` Unix time in seconds, ``type``, ``body``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    v: Literal[1] = SCHEMA_VERSION
    id: MessageId
    src: Id
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    ts: Timestamp
    type: MessageType
    body: dict[str, JsonValue]

    @field_validator("body")
    @classmethod
    def _finite_numbers_only(cls, body: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_finite(body)
        return body

    @classmethod
    def new(
        cls,
        *,
        src: str,
        type: MessageType,
        body: dict[str, JsonValue],
        seq: int | None = None,
        ts: float | None = None,
    ) -> Envelope:
        return cls(
            id=uuid.uuid4().hex,
            src=src,
            seq=seq,
            ts=time.time() if ts is None else ts,
            type=type,
            body=body,
        )


def _check_finite(value: JsonValue) -> None:
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers in the body must be finite (no NaN or Infinity)")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
