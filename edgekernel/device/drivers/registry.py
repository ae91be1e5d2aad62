"""Drivers are found by entry point (group ``edgekernel.drivers``); built-ins are registered the same way.

A driver class has a pydantic ``Config`` model and is built as ``cls(config, rate_hz=..., t0=...)``
into a `Source`. Anything wrong with it (not installed, fails to import, no Config, settings that do
not validate) is a `DriverError` naming the stream, the driver and what is wrong.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, JsonValue, ValidationError

from edgekernel.device.drivers.base import Source
from edgekernel.device.drivers.errors import DriverConfigError, DriverError, DriverNotFoundError

GROUP = "edgekernel.drivers"


def installed() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def _entry_point(name: str, stream: str) -> EntryPoint:
    found = list(entry_points(group=GROUP, name=name))
    if not found:
        names = ", ".join(installed()) or "none"
        raise DriverNotFoundError(
            name,
            stream,
            f"stream {stream}: no driver {name!r} is installed (group {GROUP}; installed: {names})",
        )
    return found[0]


def driver_class(name: str, stream: str = "-") -> type[Any]:
    ep = _entry_point(name, stream)
    try:
        loaded = ep.load()
    except Exception as err:
        raise DriverError(
            name, stream, f"driver {name!r} ({ep.value}) failed to import: {type(err).__name__}: {err}"
        ) from err
    model = getattr(loaded, "Config", None)
    if not (inspect.isclass(loaded) and inspect.isclass(model) and issubclass(model, BaseModel)):
        raise DriverError(name, stream, f"driver {name!r} ({ep.value}) is not a class with a pydantic Config")
    return loaded


def configure(
    name: str, stream: str, settings: dict[str, JsonValue] | BaseModel, *, base_dir: Path | None = None
) -> BaseModel:
    """The settings as the driver's Config model; relative paths resolve against `base_dir`."""
    model: type[BaseModel] = driver_class(name, stream).Config
    if isinstance(settings, model):
        return settings
    raw = settings.model_dump() if isinstance(settings, BaseModel) else settings
    try:
        return model.model_validate(raw, context={"base_dir": base_dir} if base_dir else None)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in err.errors()[:10]
        )
        raise DriverConfigError(name, stream, f"stream {stream}: driver {name} config: {problems}") from err


def open_source(
    name: str,
    stream: str,
    settings: dict[str, JsonValue] | BaseModel,
    *,
    rate_hz: float,
    t0: float,
    base_dir: Path | None = None,
) -> Source:
    """A source for `stream`: its driver's class built on its validated settings."""
    config = configure(name, stream, settings, base_dir=base_dir)
    source = driver_class(name, stream)(config, rate_hz=rate_hz, t0=t0)
    if not isinstance(source, Source):
        raise DriverError(name, stream, f"driver {name!r} does not make a source (due, take, run)")
    return source
