"""The envelope every message travels in, as a frozen, self-validating value object."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from edgekernel.protocol.topics import ID_PATTERN

SCHEMA_VERSION: Final = 1
MAX_SEQ = 2**63 - 1
MAX_EPOCH = 2**63 - 1
# the body object is level 1; the JSON parser stops near 200 levels and JSON serialization near 255,
# so without a limit of our own a CBOR body could decode and then fail to encode as JSON
MAX_BODY_DEPTH = 64

MessageType = Literal[
    "status", "reported", "desired", "telemetry", "event", "ack", "cmd", "reply", "log", "agg"
]

Id = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
MessageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Timestamp = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Envelope(BaseModel):
    """``v`` schema version, ``id`` unique, ``src`` sender id, ``seq`` and ``epoch``, ``ts`` Unix time in
    seconds, ``type``, ``body``.

    ``seq`` is on durable messages only (telemetry that goes through the device's outbox), counting
    from 1 in the seq space named by ``epoch``: a random id in [1, 2**63-1] that a device draws when
    its outbox starts afresh (a new, truncated or moved-aside file), so a receiver keys what it holds
    by (src, epoch, seq) and never takes a new space's seq 1 for a duplicate of the old one's. An
    envelope without ``epoch`` is in epoch 0 (devices from before epochs); ``0`` itself is never
    written, so each space has one form on the wire. Best-effort messages carry no seq: nothing is
    missing when one is lost.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    v: Literal[1] = SCHEMA_VERSION
    id: MessageId
    src: Id
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    epoch: Annotated[int, Field(ge=1, le=MAX_EPOCH)] | None = None
    ts: Timestamp
    type: MessageType
    body: dict[str, JsonValue]

    @field_validator("v", mode="before")
    @classmethod
    def _integer_version(cls, v: object) -> object:
        # Literal[1] alone lets `true` and `1.0` through, since True == 1 == 1.0 in Python
        if type(v) is not int:
            raise ValueError(f"the schema version is the integer {SCHEMA_VERSION}")
        return v

    @field_validator("body")
    @classmethod
    def _finite_and_shallow(cls, body: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_body(body)
        return body

    @model_validator(mode="after")
    def _epoch_with_seq(self) -> Envelope:
        if self.epoch is not None and self.seq is None:
            raise ValueError("an epoch names a seq space: it comes only with a seq")
        return self

    @property
    def seq_space(self) -> int:
        """The epoch this envelope's seq counts in (0 when it names none)."""
        return self.epoch or 0

    @classmethod
    def new(
        cls,
        *,
        src: str,
        type: MessageType,
        body: dict[str, JsonValue],
        seq: int | None = None,
        epoch: int = 0,
        ts: float | None = None,
    ) -> Envelope:
        """`epoch` 0 is written as no epoch at all."""
        return cls(
            id=uuid.uuid4().hex,
            src=src,
            seq=seq,
            epoch=epoch or None,
            ts=time.time() if ts is None else ts,
            type=type,
            body=body,
        )


def _check_body(body: dict[str, JsonValue]) -> None:
    _check_level(body.values(), 1)


def _check_level(children: Iterable[JsonValue], depth: int) -> None:
    """Recursion stops at MAX_BODY_DEPTH, far below Python's own limit."""
    for child in children:
        kind = type(child)
        if kind is float:
            if child - child != 0:  # type: ignore[operator]  # inf - inf and nan - nan are nan
                raise ValueError("numbers in the body must be finite (no NaN or Infinity)")
        elif kind is dict or kind is list:
            if depth >= MAX_BODY_DEPTH:
                raise ValueError(f"the body is nested more than {MAX_BODY_DEPTH} levels deep")
            _check_level(child.values() if kind is dict else child, depth + 1)  # type: ignore[union-attr,arg-type]
