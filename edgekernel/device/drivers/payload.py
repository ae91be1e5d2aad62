"""Samples out of a payload from elsewhere (the mqtt and coap drivers): JSON, CBOR or a bare number.

With `path` (or `paths`, one per channel) the value is read from the decoded document; without, the
payload is a number, or an edgekernel telemetry envelope whose samples are taken as they are (another
device's stream). What does not fit raises `PayloadError`, which the drivers count and skip.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

import cbor2
from pydantic import Field, ValidationError, field_validator, model_validator

from edgekernel.config.base import Id, Model
from edgekernel.device.drivers.base import SampleValue
from edgekernel.device.drivers.jsonpath import PathError, number, parse_path
from edgekernel.errors import EdgeKernelError
from edgekernel.protocol import Sample

MAX_PAYLOAD = 256 * 1024
PathText = Annotated[str, Field(min_length=1, max_length=256)]


class PayloadError(EdgeKernelError):
    """A payload the driver cannot take a sample from."""


class PayloadSpec(Model):
    """Where the value is in each payload."""

    path: PathText | None = Field(None, description="JSON path to the value, e.g. $.data.temp")
    paths: Annotated[dict[Id, PathText], Field(min_length=1, max_length=64)] | None = Field(
        None, description="one JSON path per channel, for a sample of several values"
    )
    ts_path: PathText | None = Field(None, description="JSON path to the sample's time (default: arrival)")
    ts_unit: Literal["s", "ms"] = "s"

    @field_validator("path", "ts_path")
    @classmethod
    def _parses(cls, path: str | None) -> str | None:
        if path is not None:
            _steps(path)
        return path

    @field_validator("paths")
    @classmethod
    def _all_parse(cls, paths: dict[str, str] | None) -> dict[str, str] | None:
        for path in (paths or {}).values():
            _steps(path)
        return paths

    @model_validator(mode="after")
    def _one_way(self) -> PayloadSpec:
        if self.path is not None and self.paths is not None:
            raise ValueError("give path or paths, not both")
        return self

    def samples(self, document: object) -> list[tuple[float | None, SampleValue]]:
        """(wall time or None for now, value) of each sample the decoded `document` holds."""
        try:
            if self.path is not None or self.paths is not None:
                return [(self._ts(document), self._value(document))]
        except PathError as err:
            raise PayloadError(str(err)) from None
        if isinstance(document, int | float) and not isinstance(document, bool):
            if not math.isfinite(document):
                raise PayloadError("the value is not finite")
            return [(None, float(document))]
        if isinstance(document, dict) and document.get("type") == "telemetry":
            return _envelope_samples(document)
        raise PayloadError("not a number and not a telemetry envelope: set path to find the value")

    def _value(self, document: object) -> SampleValue:
        if self.paths is not None:
            return {name: number(document, _steps(path)) for name, path in self.paths.items()}
        assert self.path is not None
        return number(document, _steps(self.path))

    def _ts(self, document: object) -> float | None:
        if self.ts_path is None:
            return None
        ts = number(document, _steps(self.ts_path))
        return ts / 1000.0 if self.ts_unit == "ms" else ts


def decode(payload: bytes, content_format: int | None = None) -> object:
    """JSON, CBOR (Content-Format 60, or not JSON) or a bare number in text."""
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"{len(payload)} bytes, over {MAX_PAYLOAD}")
    if content_format != 60:
        try:
            return json.loads(payload)
        except (ValueError, RecursionError):
            if content_format in (0, 50):
                raise PayloadError("not JSON") from None
    try:
        return cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise PayloadError("neither JSON nor CBOR") from None


def _steps(path: str) -> tuple[str | int, ...]:
    try:
        return parse_path(path)
    except PathError as err:
        raise ValueError(str(err)) from None


def _envelope_samples(document: dict[object, object]) -> list[tuple[float | None, SampleValue]]:
    body = document.get("body")
    samples = body.get("samples") if isinstance(body, dict) else None
    if not isinstance(samples, list) or not samples:
        raise PayloadError("a telemetry envelope without samples")
    out: list[tuple[float | None, SampleValue]] = []
    for raw in samples[:10_000]:
        try:
            sample = Sample.model_validate(raw, strict=False)
        except ValidationError as err:
            raise PayloadError(f"a bad sample in the envelope: {err.errors()[0]['msg']}") from None
        out.append((sample.ts, sample.value))
    return out
