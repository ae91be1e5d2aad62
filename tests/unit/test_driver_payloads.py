"""JSON paths and payloads of the mqtt and coap drivers."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgekernel.device.drivers.jsonpath import MAX_PATH, PathError, extract, number, parse_path, render_path
from edgekernel.device.drivers.mqtt import MqttDriverConfig
from edgekernel.device.drivers.payload import PayloadError, PayloadSpec, decode

steps = st.lists(st.one_of(st.integers(-5, 50), st.text(min_size=1, max_size=12)), max_size=6)


@given(steps)
def test_rendered_paths_parse_back(path: list[str | int]) -> None:
    assume(len(render_path(path)) <= MAX_PATH)
    assert parse_path(render_path(path)) == tuple(path)


@given(steps, st.floats(allow_nan=False, allow_infinity=False))
def test_a_value_placed_at_a_path_is_found_there(path: list[str | int], value: float) -> None:
    assert extract(json.loads(json.dumps(_build(path, value))), path) == value


def _build(path: list[str | int], value: float) -> object:
    document: object = value
    for step in reversed(path):
        if isinstance(step, int):
            items: list[object] = [0] * (step + 1 if step >= 0 else -step)
            items[step] = document
            document = items
        else:
            document = {step: document}
    return document


@given(st.text(max_size=60))
def test_any_text_parses_or_says_why(text: str) -> None:
    message = "JSON path"
    try:
        parse_path(text)
    except PathError as err:
        message = str(err)
    assert "JSON path" in message


@pytest.mark.parametrize("bad", ["a..b", "$.", "$[x]", "a[1", "$.a b"])
def test_bad_paths(bad: str) -> None:
    with pytest.raises(PathError):
        parse_path(bad)


def test_numbers_at_paths() -> None:
    doc = {"data": {"readings": [{"v": "21.5"}, {"v": True}], "a b": [1, 2, 3]}}
    assert number(doc, parse_path("$.data.readings[0].v")) == 21.5
    assert number(doc, parse_path('data["a b"][-1]')) == 3
    with pytest.raises(PathError, match=r"\$.data.readings\[1\].v: bool is not a number"):
        number(doc, parse_path("$.data.readings[1].v"))
    with pytest.raises(PathError, match="no such key"):
        number(doc, parse_path("$.nope"))


def test_payload_spec_reads_values_times_and_envelopes() -> None:
    spec = PayloadSpec(paths={"t": "$.temp", "h": "$.hum"}, ts_path="$.at", ts_unit="ms")
    assert spec.samples(decode(b'{"temp": 21, "hum": 40.5, "at": 1700000000000}')) == [
        (1_700_000_000.0, {"t": 21.0, "h": 40.5})
    ]
    bare = PayloadSpec()
    assert bare.samples(decode(b"3.5")) == [(None, 3.5)]
    envelope = {"type": "telemetry", "body": {"stream": "s", "samples": [{"ts": 1.7e9, "value": 2.0}]}}
    assert bare.samples(decode(cbor2.dumps(envelope), 60)) == [(1.7e9, 2.0)]
    for payload in (b"\xff\xfe", b'{"x": 1}', b"true"):
        with pytest.raises(PayloadError):
            bare.samples(decode(payload))
    with pytest.raises(ValidationError, match="path or paths"):
        PayloadSpec(path="a", paths={"b": "b"})
    with pytest.raises(ValidationError, match="cannot read"):
        PayloadSpec(path="a..b")


@pytest.mark.parametrize("topic", ["a/#/b", "a/b+", "", "a/\0"])
def test_mqtt_topic_filters_are_checked(topic: str) -> None:
    with pytest.raises(ValidationError):
        MqttDriverConfig(topic=topic)
