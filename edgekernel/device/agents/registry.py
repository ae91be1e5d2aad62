"""Agents are found by entry point (group ``edgekernel.agents``); built-ins are registered the same way.

An agent class has an async ``run(self, ctx)`` and, optionally, a pydantic ``Config`` model of its
settings. Anything wrong with it (not installed, fails to import, no ``run``, settings that do not
validate) is an `AgentError` naming the agent and what is wrong.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel, JsonValue, ValidationError

from edgekernel.device.agents.errors import AgentConfigError, AgentError, AgentNotFoundError

GROUP = "edgekernel.agents"


def installed() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def _entry_point(kind: str) -> EntryPoint:
    found = list(entry_points(group=GROUP, name=kind))
    if not found:
        names = ", ".join(installed()) or "none"
        raise AgentNotFoundError(kind, f"no agent {kind!r} is installed (group {GROUP}; installed: {names})")
    return found[0]


def agent_class(kind: str) -> type[Any]:
    """The class registered as `kind`."""
    ep = _entry_point(kind)
    try:
        loaded = ep.load()
    except Exception as err:
        raise AgentError(
            kind, f"agent {kind!r} ({ep.value}) failed to import: {type(err).__name__}: {err}"
        ) from err
    if not inspect.isclass(loaded) or not inspect.iscoroutinefunction(getattr(loaded, "run", None)):
        raise AgentError(kind, f"agent {kind!r} ({ep.value}) is not a class with `async def run(self, ctx)`")
    return loaded


def configure(cls: type[Any], name: str, settings: dict[str, JsonValue]) -> Any:
    """The agent's settings as its Config model (or as given, without one)."""
    model = getattr(cls, "Config", None)
    if model is None:
        return dict(settings)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise AgentError(name, f"agent {name!r}: its Config is not a pydantic model")
    try:
        return model.model_validate(settings)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in err.errors()[:10]
        )
        raise AgentConfigError(name, f"agent {name!r}: config: {problems}") from err


def settings_problems(kind: str, settings: dict[str, JsonValue]) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with `settings` for an agent of `kind`, each as (key path in the settings, message);
    nothing when `kind` is not installed here (a spec may be meant for another box)."""
    if not any(ep.name == kind for ep in entry_points(group=GROUP)):
        return []
    try:
        model = getattr(agent_class(kind), "Config", None)
    except AgentError as err:
        return [((), str(err))]
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        return []
    try:
        model.model_validate(settings)
    except ValidationError as err:
        return [(tuple(e["loc"]), e["msg"]) for e in err.errors()[:10]]
    return []
