"""Topic builders and parsers for every row of the wire contract.

Device topics are ``ek/v1/{fleet}/{device}/{kind}[/{name}]``; gateway aggregates are
``ek/v1/{fleet}/_gateway/{gateway}/agg/{device}/{stream}``. Builders refuse ids that do not match
``[a-z0-9][a-z0-9_-]{0,62}`` (so no wildcard or separator can sneak in); parsers refuse wrong roots,
depths and kinds with a `ProtocolError`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

from edgekernel.protocol.errors import ProtocolError

ROOT = "ek/v1"
GATEWAY_SEGMENT = "_gateway"
ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_ID_RE = re.compile(ID_PATTERN)
MAX_TOPIC_BYTES = 1024


class TopicKind(StrEnum):
    STATUS = "status"
    REPORTED = "reported"
    DESIRED = "desired"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    ACK = "ack"
    CMD = "cmd"
    LOG = "log"
    AGG = "agg"


# kinds whose topic ends in a name (stream, event type, command name)
_NAMED = frozenset({TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.CMD})


def is_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: str, what: str) -> str:
    if not is_id(value):
        raise ProtocolError(
            "bad-id",
            f"{what} {value!r} is not a valid id: use 1-63 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic of the wire contract. `device` is the device the topic is about."""

    fleet: str
    device: str
    kind: TopicKind
    name: str | None = None
    gateway: str | None = None

    def __post_init__(self) -> None:
        # a plain "status" would fail the `is` checks below and str(); store the enum member
        object.__setattr__(self, "kind", _kind(self.kind))
        check_id(self.fleet, "fleet")
        check_id(self.device, "device")
        if self.kind is TopicKind.AGG:
            if self.gateway is None or self.name is None:
                raise ProtocolError("bad-topic", "an aggregate topic needs a gateway and a stream")
            check_id(self.gateway, "gateway")
            check_id(self.name, "stream")
            return
        if self.gateway is not None:
            raise ProtocolError("bad-topic", f"{self.kind} topics have no gateway")
        if self.kind in _NAMED:
            if self.name is None:
                raise ProtocolError("bad-topic", f"{self.kind} topics need a name")
            check_id(self.name, "name")
        elif self.name is not None:
            raise ProtocolError("bad-topic", f"{self.kind} topics take no name")

    def __str__(self) -> str:
        if self.kind is TopicKind.AGG:
            return f"{ROOT}/{self.fleet}/{GATEWAY_SEGMENT}/{self.gateway}/agg/{self.device}/{self.name}"
        base = f"{ROOT}/{self.fleet}/{self.device}/{self.kind.value}"
        return base if self.name is None else f"{base}/{self.name}"


def status(fleet: str, device: str) -> str:
    return str(Topic(fleet, device, TopicKind.STATUS))


def reported(fleet: str, device: str) -> str:
    return str(Topic(fleet, device, TopicKind.REPORTED))


def desired(fleet: str, device: str) -> str:
    return str(Topic(fleet, device, TopicKind.DESIRED))


def telemetry(fleet: str, device: str, stream: str) -> str:
    return str(Topic(fleet, device, TopicKind.TELEMETRY, stream))


def events(fleet: str, device: str, event_type: str) -> str:
    return str(Topic(fleet, device, TopicKind.EVENTS, event_type))


def ack(fleet: str, device: str) -> str:
    return str(Topic(fleet, device, TopicKind.ACK))


def cmd(fleet: str, device: str, name: str) -> str:
    return str(Topic(fleet, device, TopicKind.CMD, name))


def log(fleet: str, device: str) -> str:
    return str(Topic(fleet, device, TopicKind.LOG))


def agg(fleet: str, gateway: str, device: str, stream: str) -> str:
    return str(Topic(fleet, device, TopicKind.AGG, stream, gateway=gateway))


def _kind(value: TopicKind | str) -> TopicKind:
    try:
        return TopicKind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in TopicKind)
        raise ProtocolError("unknown-kind", f"unknown topic kind {value!r}; allowed: {allowed}") from None


def subscription(fleet: str, kind: TopicKind, *, device: str | None = None) -> str:
    """A subscription filter for one kind of device topic; `device=None` means every device."""
    check_id(fleet, "fleet")
    kind = _kind(kind)
    who = "+" if device is None else check_id(device, "device")
    if kind is TopicKind.AGG:
        raise ProtocolError("bad-topic", "use agg_subscription for aggregate topics")
    tail = "/+" if kind in _NAMED else ""
    return f"{ROOT}/{fleet}/{who}/{kind.value}{tail}"


def agg_subscription(
    fleet: str, *, gateway: str | None = None, device: str | None = None, stream: str | None = None
) -> str:
    """A subscription filter for window aggregates; each id left as None matches any."""
    check_id(fleet, "fleet")
    gw = "+" if gateway is None else check_id(gateway, "gateway")
    who = "+" if device is None else check_id(device, "device")
    what = "+" if stream is None else check_id(stream, "stream")
    return f"{ROOT}/{fleet}/{GATEWAY_SEGMENT}/{gw}/{TopicKind.AGG.value}/{who}/{what}"


def fleet_subscription(fleet: str) -> str:
    check_id(fleet, "fleet")
    return f"{ROOT}/{fleet}/#"


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription (`$share/{group}/…`) so several gateways split the load."""
    check_id(group, "share group")
    return f"$share/{group}/{topic_filter}"


def parse(topic: str) -> Topic:
    """Parse a topic of the wire contract, or raise `ProtocolError` saying why it is not one."""
    if type(topic) is str:
        return _parse_cached(topic)
    if not isinstance(topic, str):
        raise ProtocolError("bad-topic", f"a topic is a string, not {type(topic).__name__}")
    return _parse(str(topic))


@functools.lru_cache(maxsize=4096)
def _parse_cached(topic: str) -> Topic:
    """A stream's messages come on one topic: parse it once (a refused topic is not cached)."""
    return _parse(topic)


def _parse(topic: str) -> Topic:
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ProtocolError("bad-topic", f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    if "+" in topic or "#" in topic:
        raise ProtocolError("wildcard", "a wildcard is not a topic", topic=topic)
    parts = topic.split("/")
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ProtocolError("bad-topic", f"not under {ROOT}/{{fleet}}/{{device}}/", topic=topic)
    try:
        return _parse_parts(parts)
    except ProtocolError as err:
        raise ProtocolError(err.reason, str(err), topic=topic) from None


def _parse_parts(parts: list[str]) -> Topic:
    fleet, device = parts[2], parts[3]
    if device == GATEWAY_SEGMENT:
        if len(parts) != 8 or parts[5] != TopicKind.AGG.value:
            raise ProtocolError("bad-topic", "gateway topics are _gateway/{gw}/agg/{device}/{stream}")
        return Topic(fleet, parts[6], TopicKind.AGG, parts[7], gateway=parts[4])
    try:
        kind = TopicKind(parts[4])
    except ValueError:
        allowed = ", ".join(k.value for k in TopicKind if k is not TopicKind.AGG)
        raise ProtocolError("unknown-kind", f"unknown topic kind {parts[4]!r}; allowed: {allowed}") from None
    if kind is TopicKind.AGG:
        raise ProtocolError("bad-topic", "aggregate topics live under _gateway/{gw}/")
    want = 6 if kind in _NAMED else 5
    if len(parts) != want:
        raise ProtocolError("bad-depth", f"{kind.value} topics have {want} levels, not {len(parts)}")
    return Topic(fleet, device, kind, parts[5] if want == 6 else None)


def check_filter(topic_filter: str) -> str:
    """An MQTT topic filter as the broker accepts it: ``#`` only as the whole last level, ``+`` only as a
    whole level, no NUL, at most MAX_TOPIC_BYTES; a shared ``$share/{group}/`` prefix is allowed."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ProtocolError("bad-filter", "a topic filter is a non-empty string")
    if "\x00" in topic_filter or len(topic_filter.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ProtocolError("bad-filter", f"topic filter {topic_filter!r} has a NUL or is too long")
    levels = topic_filter.split("/")
    if levels[0] == "$share":
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            raise ProtocolError(
                "bad-filter", f"shared filter {topic_filter!r} is $share/{{group}}/{{filter}}"
            )
        levels = levels[2:]
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ProtocolError("bad-filter", f"in {topic_filter!r}, '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ProtocolError("bad-filter", f"in {topic_filter!r}, '+' must be a whole level")
    return topic_filter
