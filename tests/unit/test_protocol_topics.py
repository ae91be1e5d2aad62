"""Topic builders and parsers: every builder round-trips, bad ids and bad topics give `ProtocolError`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekernel.protocol import ProtocolError, Topic, TopicKind, topics

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
not_ids = st.text().filter(lambda s: re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", s) is None)

# kind -> builder taking (fleet, device, name, gateway) and using what the kind needs
Builder = Callable[[str, str, str, str], str]
BUILDERS: dict[TopicKind, Builder] = {
    TopicKind.STATUS: lambda f, d, n, g: topics.status(f, d),
    TopicKind.REPORTED: lambda f, d, n, g: topics.reported(f, d),
    TopicKind.DESIRED: lambda f, d, n, g: topics.desired(f, d),
    TopicKind.TELEMETRY: lambda f, d, n, g: topics.telemetry(f, d, n),
    TopicKind.EVENTS: lambda f, d, n, g: topics.events(f, d, n),
    TopicKind.ACK: lambda f, d, n, g: topics.ack(f, d),
    TopicKind.CMD: lambda f, d, n, g: topics.cmd(f, d, n),
    TopicKind.LOG: lambda f, d, n, g: topics.log(f, d),
    TopicKind.AGG: lambda f, d, n, g: topics.agg(f, g, d, n),
}
NAMED = {TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.CMD}
DEVICE_KINDS = [k for k in TopicKind if k is not TopicKind.AGG]

# every positional id argument of every builder, as (label, call with one id replaced)
ID_ARGUMENTS: list[tuple[str, Callable[[Any], str]]] = [
    ("status.fleet", lambda x: topics.status(x, "d")),
    ("status.device", lambda x: topics.status("f", x)),
    ("reported.device", lambda x: topics.reported("f", x)),
    ("desired.device", lambda x: topics.desired("f", x)),
    ("telemetry.device", lambda x: topics.telemetry("f", x, "s")),
    ("telemetry.stream", lambda x: topics.telemetry("f", "d", x)),
    ("events.type", lambda x: topics.events("f", "d", x)),
    ("ack.fleet", lambda x: topics.ack(x, "d")),
    ("cmd.name", lambda x: topics.cmd("f", "d", x)),
    ("log.device", lambda x: topics.log("f", x)),
    ("agg.fleet", lambda x: topics.agg(x, "g", "d", "s")),
    ("agg.gateway", lambda x: topics.agg("f", x, "d", "s")),
    ("agg.device", lambda x: topics.agg("f", "g", x, "s")),
    ("agg.stream", lambda x: topics.agg("f", "g", "d", x)),
]


def mqtt_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 5 filter matching (section 4.7), enough to check the filters we build."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def expected_topic(kind: TopicKind, f: str, d: str, n: str, g: str) -> Topic:
    if kind is TopicKind.AGG:
        return Topic(f, d, kind, n, gateway=g)
    return Topic(f, d, kind, n if kind in NAMED else None)


# --- builders ---------------------------------------------------------------------------------


@given(kind=st.sampled_from(TopicKind), f=ids, d=ids, n=ids, g=ids)
def test_every_builder_round_trips_through_parse(kind: TopicKind, f: str, d: str, n: str, g: str) -> None:
    built = BUILDERS[kind](f, d, n, g)
    parsed = topics.parse(built)
    assert parsed == expected_topic(kind, f, d, n, g)
    assert str(parsed) == built


def test_builders_spell_the_wire_contract() -> None:
    assert topics.status("f1", "d1") == "ek/v1/f1/d1/status"
    assert topics.reported("f1", "d1") == "ek/v1/f1/d1/reported"
    assert topics.desired("f1", "d1") == "ek/v1/f1/d1/desired"
    assert topics.telemetry("f1", "d1", "temp") == "ek/v1/f1/d1/telemetry/temp"
    assert topics.events("f1", "d1", "anomaly") == "ek/v1/f1/d1/events/anomaly"
    assert topics.ack("f1", "d1") == "ek/v1/f1/d1/ack"
    assert topics.cmd("f1", "d1", "reboot") == "ek/v1/f1/d1/cmd/reboot"
    assert topics.log("f1", "d1") == "ek/v1/f1/d1/log"
    assert topics.agg("f1", "gw1", "d1", "temp") == "ek/v1/f1/_gateway/gw1/agg/d1/temp"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "+",
        "#",
        "a+",
        "a#b",
        "a/b",
        "/",
        "A",
        "dEvice",
        "_a",
        "-a",
        "a b",
        "a\n",
        "é",
        "a" * 64,
        "$share",
    ],
)
def test_builders_reject_bad_ids_in_every_position(bad: str) -> None:
    for label, build in ID_ARGUMENTS:
        with pytest.raises(ProtocolError) as info:
            build(bad)
        assert info.value.reason == "bad-id", label
        assert repr(bad) in str(info.value), label


@pytest.mark.parametrize("bad", [None, 7, b"dev", ["dev"], 1.5])
def test_builders_reject_non_strings(bad: object) -> None:
    for label, build in ID_ARGUMENTS:
        with pytest.raises(ProtocolError) as info:
            build(bad)
        assert info.value.reason in {"bad-id", "bad-topic"}, label  # a None name is a missing one


def test_ids_of_63_characters_are_the_longest_allowed() -> None:
    longest = "a" * 63
    assert topics.parse(topics.status(longest, longest)).device == longest
    with pytest.raises(ProtocolError, match="not a valid id"):
        topics.status("a" * 64, "d")


@given(bad=not_ids)
def test_any_text_that_is_not_an_id_is_refused(bad: str) -> None:
    assert not topics.is_id(bad)
    with pytest.raises(ProtocolError) as info:
        topics.telemetry("f", "d", bad)
    assert info.value.reason == "bad-id"


def test_is_id_says_no_to_non_strings() -> None:
    assert not topics.is_id(5)  # type: ignore[arg-type]
    assert not topics.is_id(None)  # type: ignore[arg-type]


# --- the Topic value object -------------------------------------------------------------------


def test_topic_accepts_a_plain_string_kind() -> None:
    topic = Topic("f", "d", "telemetry", "s")  # type: ignore[arg-type]
    assert topic.kind is TopicKind.TELEMETRY
    assert str(topic) == "ek/v1/f/d/telemetry/s"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"kind": TopicKind.TELEMETRY}, "bad-topic"),  # named kind without a name
        ({"kind": TopicKind.STATUS, "name": "x"}, "bad-topic"),  # unnamed kind with a name
        ({"kind": TopicKind.STATUS, "gateway": "g"}, "bad-topic"),
        ({"kind": TopicKind.AGG, "name": "s"}, "bad-topic"),  # aggregate without a gateway
        ({"kind": TopicKind.AGG, "gateway": "g"}, "bad-topic"),  # aggregate without a stream
        ({"kind": TopicKind.AGG, "name": "S", "gateway": "g"}, "bad-id"),
        ({"kind": "nope"}, "unknown-kind"),
    ],
)
def test_topic_refuses_inconsistent_fields(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Topic("f", "d", **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == reason


# --- parse ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "ek",
        "ek/v1",
        "ek/v1/f/d",
        "ek/v2/f/d/status",
        "EK/v1/f/d/status",
        "/ek/v1/f/d/status",
        "v1/f/d/status/x",
        "$share/g/ek/v1/f/d/status",
        "$SYS/broker/load",
    ],
)
def test_parse_rejects_topics_outside_the_root(topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(topic)
    assert info.value.reason == "bad-topic"


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_parse_rejects_the_wrong_depth_for_each_kind(kind: TopicKind) -> None:
    base = f"ek/v1/f/d/{kind.value}"
    wrong = [f"{base}/x/y", base] if kind in NAMED else [f"{base}/x", f"{base}/"]
    for topic in wrong:
        with pytest.raises(ProtocolError) as info:
            topics.parse(topic)
        assert info.value.reason == "bad-depth", topic
        assert info.value.topic == topic
        assert kind.value in str(info.value)


@pytest.mark.parametrize("kind", ["statuses", "STATUS", "event", "metrics", "", " status"])
def test_parse_rejects_unknown_kinds_and_lists_the_allowed_ones(kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(f"ek/v1/f/d/{kind}")
    assert info.value.reason == "unknown-kind"
    assert "allowed: status, reported" in str(info.value)


def test_parse_rejects_aggregates_outside_the_gateway_segment() -> None:
    with pytest.raises(ProtocolError, match="_gateway") as info:
        topics.parse("ek/v1/f/d/agg/s")
    assert info.value.reason == "bad-topic"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("ek/v1/f/_gateway", "bad-topic"),
        ("ek/v1/f/_gateway/g", "bad-topic"),
        ("ek/v1/f/_gateway/g/agg/d", "bad-topic"),
        ("ek/v1/f/_gateway/g/agg/d/s/x", "bad-topic"),
        ("ek/v1/f/_gateway/g/aggs/d/s", "bad-topic"),
        ("ek/v1/f/_gateway/g/status/d/s", "bad-topic"),
        ("ek/v1/f/_gateway/G/agg/d/s", "bad-id"),
        ("ek/v1/f/_gateway//agg/d/s", "bad-id"),
        ("ek/v1/f/_gateway/g/agg/_gateway/s", "bad-id"),
        ("ek/v1/f/_gateway/g/agg/d/", "bad-id"),
        ("ek/v1/f/_Gateway/g/agg/d/s", "unknown-kind"),  # a bad device id, but the kind fails first
    ],
)
def test_parse_rejects_malformed_gateway_topics(topic: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(topic)
    assert info.value.reason == reason
    assert info.value.topic == topic


@pytest.mark.parametrize(
    "topic",
    [
        "ek/v1/f/+/status",
        "ek/v1/f/#",
        "ek/v1/+/d/status",
        "ek/v1/f/d/telemetry/+",
        "ek/v1/f/d/tele#metry/s",
        "ek/v1/f/_gateway/+/agg/d/s",
        "#",
    ],
)
def test_parse_rejects_wildcards(topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(topic)
    assert info.value.reason == "wildcard"


@pytest.mark.parametrize(
    ("topic", "what"),
    [
        ("ek/v1/Fleet/d/status", "fleet"),
        ("ek/v1/f/-d/status", "device"),
        ("ek/v1/f//status", "device"),
        ("ek/v1/f/d/telemetry/Temp", "name"),
        ("ek/v1/f/d/cmd/", "name"),
    ],
)
def test_parse_names_the_bad_id_and_the_topic(topic: str, what: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(topic)
    assert info.value.reason == "bad-id"
    assert info.value.topic == topic
    assert str(info.value).startswith(what)
    assert repr(topic) in str(info.value)


@pytest.mark.parametrize("topic", [None, b"ek/v1/f/d/status", 42, ["ek", "v1"]])
def test_parse_rejects_non_strings(topic: object) -> None:
    with pytest.raises(ProtocolError, match="a topic is a string") as info:
        topics.parse(topic)  # type: ignore[arg-type]
    assert info.value.reason == "bad-topic"


def test_parse_rejects_topics_over_the_length_limit_before_splitting() -> None:
    long = "ek/v1/f/d/status/" + "x/" * topics.MAX_TOPIC_BYTES
    with pytest.raises(ProtocolError, match="longer than") as info:
        topics.parse(long)
    assert info.value.reason == "bad-topic"


REASONS = {"bad-topic", "bad-id", "bad-depth", "unknown-kind", "wildcard"}


def check_parse(topic: str) -> None:
    """`parse` either returns the topic's canonical form or raises `ProtocolError`; nothing else."""
    try:
        parsed = topics.parse(topic)
    except ProtocolError as err:
        outcome = err.reason
    else:
        outcome = "ok" if str(parsed) == topic else f"parsed as {parsed}"
    assert outcome in {*REASONS, "ok"}


@given(topic=st.text())
def test_parse_of_arbitrary_text_raises_only_protocol_error(topic: str) -> None:
    check_parse(topic)


LEVELS = ["ek", "v1", "v2", "f", "d", "g", "s", "_gateway", "agg", "", "+", "#", "A", "\x00", "é"]
LEVELS += [k.value for k in TopicKind]


@given(
    head=st.sampled_from(["ek/v1/", "ek/v1/f/", "ek/v1/f/d/", "ek/v1/f/_gateway/", ""]),
    levels=st.lists(st.sampled_from(LEVELS) | ids | st.text(max_size=5), max_size=8),
)
def test_parse_of_topic_shaped_text_raises_only_protocol_error(head: str, levels: list[str]) -> None:
    check_parse(head + "/".join(levels))


# --- subscription filters ---------------------------------------------------------------------


def test_subscription_filters_look_right() -> None:
    assert topics.subscription("f", TopicKind.STATUS) == "ek/v1/f/+/status"
    assert topics.subscription("f", TopicKind.TELEMETRY) == "ek/v1/f/+/telemetry/+"
    assert topics.subscription("f", TopicKind.CMD, device="d") == "ek/v1/f/d/cmd/+"
    assert topics.subscription("f", TopicKind.ACK, device="d") == "ek/v1/f/d/ack"
    assert topics.subscription("f", "events") == "ek/v1/f/+/events/+"  # type: ignore[arg-type]
    assert topics.fleet_subscription("f") == "ek/v1/f/#"
    assert topics.agg_subscription("f") == "ek/v1/f/_gateway/+/agg/+/+"
    assert topics.agg_subscription("f", device="d", stream="s") == "ek/v1/f/_gateway/+/agg/d/s"
    assert topics.agg_subscription("f", gateway="g") == "ek/v1/f/_gateway/g/agg/+/+"


def test_shared_subscriptions_prefix_the_filter_with_the_group() -> None:
    assert (
        topics.shared("gateways", topics.subscription("f", TopicKind.TELEMETRY))
        == "$share/gateways/ek/v1/f/+/telemetry/+"
    )


@pytest.mark.parametrize("group", ["", "a/b", "+", "#", "Gateways", None])
def test_shared_rejects_bad_group_names(group: object) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.shared(group, "ek/v1/f/#")  # type: ignore[arg-type]
    assert info.value.reason == "bad-id"


@pytest.mark.parametrize(
    "call",
    [
        lambda: topics.subscription("F", TopicKind.STATUS),
        lambda: topics.subscription("f", TopicKind.STATUS, device="+"),
        lambda: topics.fleet_subscription("#"),
        lambda: topics.agg_subscription("f", stream="a/b"),
    ],
)
def test_filters_reject_bad_ids(call: Callable[[], str]) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.reason == "bad-id"


def test_subscription_refuses_aggregates_and_unknown_kinds() -> None:
    with pytest.raises(ProtocolError, match="agg_subscription"):
        topics.subscription("f", TopicKind.AGG)
    with pytest.raises(ProtocolError) as info:
        topics.subscription("f", "metrics")  # type: ignore[arg-type]
    assert info.value.reason == "unknown-kind"


@given(kind=st.sampled_from(TopicKind), other=st.sampled_from(TopicKind), f=ids, d=ids, n=ids)
def test_filters_match_exactly_the_topics_they_are_for(
    kind: TopicKind, other: TopicKind, f: str, d: str, n: str
) -> None:
    topic = BUILDERS[kind](f, d, n, "gw")
    assert mqtt_matches(topics.fleet_subscription(f), topic)
    if kind is TopicKind.AGG:
        assert mqtt_matches(topics.agg_subscription(f), topic)
        assert mqtt_matches(topics.agg_subscription(f, gateway="gw", device=d, stream=n), topic)
        return
    assert mqtt_matches(topics.subscription(f, kind), topic)
    assert mqtt_matches(topics.subscription(f, kind, device=d), topic)
    assert not mqtt_matches(topics.agg_subscription(f), topic)
    if other not in (kind, TopicKind.AGG):
        assert not mqtt_matches(topics.subscription(f, other), topic)
