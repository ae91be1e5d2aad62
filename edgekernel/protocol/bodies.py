"""Typed bodies for the envelope types the programs exchange.

`Envelope.body` stays a plain JSON object on the wire; these models give it a shape and reject what
does not fit, so `TelemetryBody.from_envelope(env)` either returns samples or raises `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from edgekernel.protocol.envelope import MAX_EPOCH, Envelope, Id, MessageType, Timestamp
from edgekernel.protocol.errors import ProtocolError

MAX_SAMPLES = 10_000

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    ENVELOPE_TYPE: ClassVar[MessageType]

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Self:
        expected = cls.ENVELOPE_TYPE
        if envelope.type != expected:
            raise ProtocolError("wrong-type", f"expected a {expected} envelope, got {envelope.type}")
        try:
            return cls.model_validate(envelope.body)
        except ValidationError as err:
            raise ProtocolError("bad-body", f"{expected} body: {_first_error(err)}") from None

    def to_body(self) -> dict[str, JsonValue]:
        data: dict[str, JsonValue] = self.model_dump(mode="json", exclude_none=True)
        return data

    def to_envelope(
        self, src: str, *, seq: int | None = None, epoch: int = 0, ts: float | None = None
    ) -> Envelope:
        return Envelope.new(
            src=src, type=self.ENVELOPE_TYPE, body=self.to_body(), seq=seq, epoch=epoch, ts=ts
        )


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


class StatusBody(_Body):
    """Retained birth / Last Will: is the device online, and which connection is this."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "status"
    online: bool
    boot: Annotated[int, Field(ge=0, le=2**63 - 1)]


class Sample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    ts: Timestamp
    value: FiniteFloat | dict[Id, FiniteFloat]


class TelemetryBody(_Body):
    """A batch of samples of one stream, so a high-rate sensor pays one message per batch."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "telemetry"
    stream: Id
    unit: Annotated[str, Field(max_length=32)] | None = None
    samples: Annotated[list[Sample], Field(min_length=1, max_length=MAX_SAMPLES)]


class Capabilities(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    cores: Annotated[int, Field(ge=1)]
    ram_bytes: Annotated[int, Field(ge=0)]
    accelerators: list[str] = []
    runtimes: dict[str, str] = {}
    onnx_providers: list[str] = []
    arch: str = ""
    os: str = ""


class ModelState(BaseModel):
    """A model the device holds: which version, on what, and whether it is loaded now."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    name: Id
    version: Annotated[str, Field(max_length=32)]
    runtime: Annotated[str, Field(max_length=32)]
    device: Annotated[str, Field(max_length=64)] = ""
    loaded: bool = False


class InferenceSummary(BaseModel):
    """The inference scheduler in a few numbers, since the device started."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    completed: Annotated[int, Field(ge=0)] = 0
    failed: Annotated[int, Field(ge=0)] = 0
    rejected: Annotated[int, Field(ge=0)] = 0
    queue_depth: Annotated[int, Field(ge=0)] = 0
    p95_ms: Annotated[float, Field(ge=0)] = 0.0
    mean_batch: Annotated[float, Field(ge=0)] = 0.0


class BacklogSummary(BaseModel):
    """The device's outbox: what waits for the gateway's acknowledgement, what was dropped, the
    dead letters it keeps (messages the gateway refused for good), and the messages refused because
    its disk was full."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    pending: Annotated[int, Field(ge=0)] = 0
    pending_bytes: Annotated[int, Field(ge=0)] = 0
    oldest_age_s: Annotated[float, Field(ge=0)] = 0.0
    dropped: Annotated[int, Field(ge=0)] = 0
    dead: Annotated[int, Field(ge=0)] = 0
    disk_full: Annotated[int, Field(ge=0)] = 0


class AgentReport(BaseModel):
    """An agent on the device: its state under the supervisor and what it used."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    name: Id
    agent: Annotated[str, Field(max_length=128)]
    isolation: Annotated[str, Field(max_length=16)]
    state: Annotated[str, Field(max_length=16)]
    since: Timestamp
    restarts: Annotated[int, Field(ge=0)] = 0
    failures: Annotated[int, Field(ge=0)] = 0
    last_error: Annotated[str, Field(max_length=500)] = ""
    usage: dict[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=0)]] = {}


class EventBody(_Body):
    """Something that happened on the device (an anomaly, an agent's state change), on
    ``…/events/{type}``, durable through the outbox. ``agent`` names the agent that raised it."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "event"
    type: Id
    agent: Id | None = None
    data: JsonValue = None


class ReportedBody(_Body):
    """What a device says about itself: capabilities, free resources, config generation."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "reported"
    capabilities: Capabilities
    free_ram_bytes: Annotated[int, Field(ge=0)]
    load_1m: Annotated[float, Field(ge=0)]
    streams: list[Id] = []
    labels: dict[Id, Annotated[str, Field(max_length=128)]] = {}
    software: str = ""
    config_generation: Annotated[int, Field(ge=0)] = 0
    models: list[ModelState] = []
    inference: InferenceSummary | None = None
    backlog: BacklogSummary | None = None
    agents: Annotated[list[AgentReport], Field(max_length=1024)] = []


MAX_ACK_RANGES = 4096
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]


class DesiredBody(_Body):
    """What the fleet wants of a device, numbered by its config generation. Only the generation has a
    shape so far; other members (agent assignments, model artifacts) pass through unchecked."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True, allow_inf_nan=False)
    ENVELOPE_TYPE: ClassVar[MessageType] = "desired"
    generation: Seq


def _cover(seqs: Iterable[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


class AckBody(_Body):
    """The gateway's word that it holds these seqs of seq space `epoch` durably: inclusive (first,
    last) ranges, sorted and disjoint. A device deletes those rows from its outbox only when `epoch`
    is its outbox's, so an ack meant for a space it left never frees a row of its new one. Epoch 0 is
    written as no ``epoch`` member, which devices from before epochs expect."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "ack"
    ranges: Annotated[
        list[Annotated[list[Seq], Field(min_length=2, max_length=2)]],
        Field(min_length=1, max_length=MAX_ACK_RANGES),
    ]
    epoch: Annotated[int, Field(ge=1, le=MAX_EPOCH)] | None = None

    @property
    def seq_space(self) -> int:
        return self.epoch or 0

    @model_validator(mode="after")
    def _sorted_and_disjoint(self) -> AckBody:
        previous = -2
        for first, last in self.ranges:
            if first > last:
                raise ValueError(f"range ({first}, {last}) is reversed")
            if first <= previous + 1:
                raise ValueError("ranges must be sorted, disjoint and not adjacent")
            previous = last
        return self

    @classmethod
    def of(cls, seqs: Iterable[int], epoch: int = 0) -> AckBody:
        """The minimal ranges covering `seqs`."""
        return cls(ranges=_cover(seqs), epoch=epoch or None)

    @classmethod
    def split(cls, seqs: Iterable[int], epoch: int = 0) -> list[AckBody]:
        """The acks covering `seqs`, each within the limit of MAX_ACK_RANGES ranges."""
        ranges = _cover(seqs)
        return [
            cls(ranges=ranges[i : i + MAX_ACK_RANGES], epoch=epoch or None)
            for i in range(0, len(ranges), MAX_ACK_RANGES)
        ]

    def seqs(self) -> Iterator[int]:
        for first, last in self.ranges:
            yield from range(first, last + 1)
