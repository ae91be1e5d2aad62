"""What a ``…/desired`` body assigns to the device: agents and sensors, each checked like the config's."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import JsonValue, TypeAdapter, ValidationError

from edgekernel.config.agents import AgentSpec
from edgekernel.config.models import SensorConfig
from edgekernel.protocol import ProtocolError

T = TypeVar("T")


def desired_agents(body: dict[str, JsonValue]) -> list[AgentSpec]:
    """The agents a ``…/desired`` body assigns to the device (none when it names none)."""
    specs = _validated(body, "agents", _AGENT_LIST)
    if len({spec.name for spec in specs}) != len(specs):
        raise ProtocolError("bad-body", "desired agents: a name is assigned twice")
    return specs


def desired_sensors(body: dict[str, JsonValue]) -> list[SensorConfig] | None:
    """The sensors a ``…/desired`` body sets, or None when it does not say (the config's stay)."""
    if body.get("sensors") is None:
        return None
    sensors = _validated(body, "sensors", _SENSOR_LIST)
    if len({sensor.stream for sensor in sensors}) != len(sensors):
        raise ProtocolError("bad-body", "desired sensors: a stream is configured twice")
    return sensors


def _validated(body: dict[str, JsonValue], key: str, adapter: TypeAdapter[list[Any]]) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("bad-body", f"desired {key}.{where}: {first['msg']}") from None


_AGENT_LIST = TypeAdapter(list[AgentSpec])
_SENSOR_LIST = TypeAdapter(list[SensorConfig])
