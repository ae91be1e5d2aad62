"""Typed bodies: they round-trip through envelopes and both codecs, and a body that does not fit
gives `ProtocolError` naming the field, whatever JSON it holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekernel.protocol import (
    Capabilities,
    Encoding,
    Envelope,
    MessageType,
    ProtocolError,
    ReportedBody,
    Sample,
    StatusBody,
    TelemetryBody,
    check_seq,
    check_times,
    decode,
    encode,
    inbound,
)
from edgekernel.protocol.bodies import MAX_SAMPLES, AckBody
from edgekernel.protocol.times import EARLIEST_TS

BODIES: list[type[StatusBody | TelemetryBody | ReportedBody]] = [StatusBody, TelemetryBody, ReportedBody]

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

samples = st.builds(Sample, ts=times, value=finite | st.dictionaries(ids, finite, max_size=4))
telemetry_bodies = st.builds(
    TelemetryBody,
    stream=ids,
    unit=st.none() | st.text(max_size=32),
    samples=st.lists(samples, min_size=1, max_size=20),
)
status_bodies = st.builds(
    StatusBody, online=st.booleans(), boot=st.integers(min_value=0, max_value=2**63 - 1)
)
reported_bodies = st.builds(
    ReportedBody,
    capabilities=st.builds(
        Capabilities,
        cores=st.integers(min_value=1, max_value=1024),
        ram_bytes=st.integers(min_value=0, max_value=2**48),
        accelerators=st.lists(st.text(max_size=10), max_size=3),
        runtimes=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
        onnx_providers=st.lists(st.text(max_size=20), max_size=3),
        arch=st.text(max_size=10),
        os=st.text(max_size=10),
    ),
    free_ram_bytes=st.integers(min_value=0, max_value=2**48),
    load_1m=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    streams=st.lists(ids, max_size=4),
    labels=st.dictionaries(ids, st.text(max_size=128), max_size=4),
    software=st.text(max_size=20),
    config_generation=st.integers(min_value=0, max_value=2**53),
)
any_body = status_bodies | telemetry_bodies | reported_bodies


def envelope(type_: MessageType, body: dict[str, Any]) -> Envelope:
    return Envelope(id="m1", src="dev-1", ts=10.0, type=type_, body=body)


def unchecked(type_: MessageType, body: dict[str, Any]) -> Envelope:
    """An envelope that skipped validation, to reach checks the envelope would make first."""
    return Envelope.model_construct(id="m1", src="dev-1", ts=10.0, type=type_, body=body)


def telemetry(**changes: Any) -> dict[str, Any]:
    return {"stream": "temp", "unit": "C", "samples": [{"ts": 1.0, "value": 21.5}], **changes}


def status(**changes: Any) -> dict[str, Any]:
    return {"online": True, "boot": 3, **changes}


def reported(**changes: Any) -> dict[str, Any]:
    capabilities = {"cores": 4, "ram_bytes": 2**32, "accelerators": ["npu"], "runtimes": {"onnx": "1.18"}}
    return {"capabilities": capabilities, "free_ram_bytes": 2**30, "load_1m": 0.5, **changes}


# --- round trips ------------------------------------------------------------------------------


@given(body=any_body, seq=st.none() | st.integers(0, 2**63 - 1), ts=times)
def test_bodies_round_trip_through_envelopes(
    body: StatusBody | TelemetryBody | ReportedBody, seq: int | None, ts: float
) -> None:
    env = body.to_envelope("dev-1", seq=seq, ts=ts)
    assert (env.type, env.src, env.seq, env.ts) == (body.ENVELOPE_TYPE, "dev-1", seq, ts)
    assert type(body).from_envelope(env) == body


@given(body=any_body, encoding=st.sampled_from(Encoding))
def test_bodies_round_trip_through_both_codecs(
    body: StatusBody | TelemetryBody | ReportedBody, encoding: Encoding
) -> None:
    payload = encode(body.to_envelope("dev-1", seq=1), encoding)
    assert type(body).from_envelope(decode(payload)) == body


def test_to_envelope_stamps_the_time_when_none_is_given() -> None:
    env = StatusBody(online=False, boot=0).to_envelope("dev-1")
    assert env.ts > 1_600_000_000
    assert env.seq is None
    assert env.body == {"online": False, "boot": 0}


def test_optional_fields_are_left_out_of_the_body() -> None:
    body = TelemetryBody(stream="temp", samples=[Sample(ts=1.0, value=2.0)]).to_body()
    assert body == {"stream": "temp", "samples": [{"ts": 1.0, "value": 2.0}]}


def test_a_full_batch_is_accepted() -> None:
    full = telemetry(samples=[{"ts": 1.0, "value": 1.0}] * MAX_SAMPLES)
    assert len(TelemetryBody.from_envelope(envelope("telemetry", full)).samples) == MAX_SAMPLES


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BODIES)
def test_the_wrong_envelope_type_is_refused(cls: type[StatusBody | TelemetryBody | ReportedBody]) -> None:
    for other in get_args(MessageType):
        if other == cls.ENVELOPE_TYPE:
            continue
        with pytest.raises(ProtocolError) as info:
            cls.from_envelope(envelope(other, status()))
        assert info.value.reason == "wrong-type"
        assert f"expected a {cls.ENVELOPE_TYPE} envelope, got {other}" in str(info.value)


BAD_BODIES: list[tuple[type[StatusBody | TelemetryBody | ReportedBody], dict[str, Any], str]] = [
    (TelemetryBody, telemetry(samples=[]), "samples"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": 1.0}] * (MAX_SAMPLES + 1)), "samples"),
    (TelemetryBody, telemetry(samples={"ts": 1.0, "value": 1.0}), "samples"),
    (TelemetryBody, telemetry(stream="Temp"), "stream"),
    (TelemetryBody, telemetry(stream="a/b"), "stream"),
    (TelemetryBody, telemetry(stream=""), "stream"),
    (TelemetryBody, telemetry(stream=7), "stream"),
    (TelemetryBody, telemetry(unit="x" * 33), "unit"),
    (TelemetryBody, telemetry(extra=1), "extra"),
    (TelemetryBody, {"samples": [{"ts": 1.0, "value": 1.0}]}, "stream"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": 1.0, "q": 1}]), "samples.0.q"),
    (
        TelemetryBody,
        telemetry(samples=[{"ts": 1.0, "value": 1.0}, {"ts": -1.0, "value": 1.0}]),
        "samples.1.ts",
    ),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0}]), "samples.0.value"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": True}]), "samples.0.value"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": "21.5"}]), "samples.0.value"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": {"X": 1.0}}]), "samples.0.value"),
    (TelemetryBody, telemetry(samples=[{"ts": 1.0, "value": [1.0]}]), "samples.0.value"),
    (StatusBody, status(online="yes"), "online"),
    (StatusBody, status(online=1), "online"),
    (StatusBody, status(boot=-1), "boot"),
    (StatusBody, status(boot=True), "boot"),
    (StatusBody, status(boot=1.0), "boot"),
    (StatusBody, status(boot=2**64), "boot"),
    (StatusBody, {"online": True}, "boot"),
    (StatusBody, status(ts=1.0), "ts"),
    (ReportedBody, reported(load_1m=-0.1), "load_1m"),
    (ReportedBody, reported(free_ram_bytes=-1), "free_ram_bytes"),
    (ReportedBody, reported(capabilities={"cores": 0, "ram_bytes": 0}), "capabilities.cores"),
    (ReportedBody, reported(capabilities={"cores": 1, "ram_bytes": 0, "gpu": 1}), "capabilities.gpu"),
    (ReportedBody, reported(streams=["ok", "Not-ok"]), "streams.1"),
    (ReportedBody, reported(labels={"zone": "x" * 129}), "labels.zone"),
    (ReportedBody, reported(labels={"Zone": "a"}), "labels.Zone"),
    (ReportedBody, reported(config_generation=-1), "config_generation"),
]


@pytest.mark.parametrize(("cls", "body", "path"), BAD_BODIES)
def test_bad_bodies_name_the_field(
    cls: type[StatusBody | TelemetryBody | ReportedBody], body: dict[str, Any], path: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        cls.from_envelope(envelope(cls.ENVELOPE_TYPE, body))
    assert info.value.reason == "bad-body"
    assert f"{cls.ENVELOPE_TYPE} body: {path}" in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("make_sample", "path"),
    [
        (lambda bad: {"ts": 1.0, "value": bad}, "samples.0.value"),
        (lambda bad: {"ts": 1.0, "value": {"x": bad}}, "samples.0.value"),
        (lambda bad: {"ts": bad, "value": 1.0}, "samples.0.ts"),
    ],
)
def test_non_finite_samples_are_refused_even_if_the_envelope_let_them_by(
    bad: float, make_sample: Callable[[float], dict[str, Any]], path: str
) -> None:
    # Envelope validation already refuses NaN and Infinity; the body must not rely on that
    body = telemetry(samples=[make_sample(bad)])
    with pytest.raises(ProtocolError) as info:
        TelemetryBody.from_envelope(unchecked("telemetry", body))
    assert info.value.reason == "bad-body"
    assert f"telemetry body: {path}" in str(info.value)


def test_non_finite_load_is_refused_even_if_the_envelope_let_it_by() -> None:
    with pytest.raises(ProtocolError, match="reported body: load_1m") as info:
        ReportedBody.from_envelope(unchecked("reported", reported(load_1m=math.nan)))
    assert info.value.reason == "bad-body"


def test_several_problems_are_counted() -> None:
    with pytest.raises(ProtocolError, match=r"\(and 2 more\)"):
        StatusBody.from_envelope(envelope("status", {"online": "x", "boot": -1, "extra": 0}))


# --- fuzzing: nothing but ProtocolError -------------------------------------------------------


def from_envelope_outcome(cls: type[StatusBody | TelemetryBody | ReportedBody], env: Envelope) -> str:
    try:
        return type(cls.from_envelope(env)).__name__
    except ProtocolError as err:
        return err.reason


@given(
    cls=st.sampled_from(BODIES),
    type_=st.sampled_from(get_args(MessageType)),
    body=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_arbitrary_json_bodies_raise_only_protocol_error(
    cls: type[StatusBody | TelemetryBody | ReportedBody], type_: MessageType, body: dict[str, Any]
) -> None:
    outcome = from_envelope_outcome(cls, envelope(type_, body))
    assert outcome in {"wrong-type", "bad-body", cls.__name__}


@given(valid=any_body, data=st.data())
def test_valid_bodies_with_fields_replaced_raise_only_protocol_error(
    valid: StatusBody | TelemetryBody | ReportedBody, data: st.DataObject
) -> None:
    body = valid.to_body()
    keys = [*body, "extra"]
    for key in data.draw(st.sets(st.sampled_from(keys), min_size=1, max_size=2), label="replaced"):
        body[key] = data.draw(json_values, label=key)
    if isinstance(body.get("samples"), list) and body["samples"] and data.draw(st.booleans()):
        sample_keys = st.sampled_from(["ts", "value", "x"])
        body["samples"][0] = data.draw(st.dictionaries(sample_keys, json_values), label="sample")
    cls = type(valid)
    assert from_envelope_outcome(cls, envelope(cls.ENVELOPE_TYPE, body)) in {"bad-body", cls.__name__}


# --- acks name their seq space, times are bounded, only telemetry takes a seq -----------------------

seq_sets = st.sets(st.integers(0, 2**63 - 1), min_size=1, max_size=50)
epochs = st.integers(0, 2**63 - 1)


@given(seqs=seq_sets, epoch=epochs, encoding=st.sampled_from(Encoding))
def test_acks_round_trip_with_their_epoch(seqs: set[int], epoch: int, encoding: Encoding) -> None:
    [ack] = AckBody.split(seqs, epoch)
    back = AckBody.from_envelope(decode(encode(ack.to_envelope("gw"), encoding)))
    assert (set(back.seqs()), back.seq_space) == (seqs, epoch)
    assert ("epoch" in ack.to_body()) == (epoch != 0)  # devices from before epochs read epoch 0 acks


@pytest.mark.parametrize("epoch", [0, -1, 2**63, 1.5, True, "1"])
def test_an_ack_with_a_bad_epoch_is_refused(epoch: object) -> None:
    env = envelope("ack", {"ranges": [[1, 2]], "epoch": epoch})
    with pytest.raises(ProtocolError, match="epoch"):
        AckBody.from_envelope(env)


NOW = 1_800_000_000.0


@given(
    ts=st.floats(allow_nan=False, allow_infinity=False),
    sample_ts=st.floats(allow_nan=False, allow_infinity=False),
)
def test_times_outside_2000_to_now_plus_skew_are_refused(ts: float, sample_ts: float) -> None:
    env = Envelope.new(src="d", type="telemetry", body={}, seq=1, ts=abs(ts))
    good = EARLIEST_TS <= abs(ts) <= NOW + 600 and EARLIEST_TS <= sample_ts <= NOW + 600
    if good:
        check_times(env, [NOW, sample_ts], now=NOW, skew_s=600)
    else:
        with pytest.raises(ProtocolError, match="ts") as info:
            check_times(env, [NOW, sample_ts], now=NOW, skew_s=600)
        assert info.value.reason == "bad-ts"


@pytest.mark.parametrize(
    ("ts", "sample_ts", "says"),
    [(0.0, NOW, "envelope ts 0.0 is before 2000"), (1e15, NOW, "envelope ts"), (NOW, 1e300, "sample 0 ts")],
)
def test_bad_times_are_named(ts: float, sample_ts: float, says: str) -> None:
    env = Envelope.new(src="d", type="telemetry", body={}, seq=1, ts=ts)
    with pytest.raises(ProtocolError, match=says):
        check_times(env, [sample_ts], now=NOW)


@pytest.mark.parametrize("kind", ["status", "reported", "log"])
def test_only_telemetry_and_events_take_a_seq(kind: str) -> None:
    env = Envelope.new(src="dev-1", type=kind, body={}, seq=3)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as info:
        inbound(f"ek/v1/f/dev-1/{kind}", encode(env))
    assert info.value.reason == "unexpected-seq"
    check_seq(Envelope.new(src="dev-1", type="telemetry", body={}, seq=3, epoch=9))
    check_seq(Envelope.new(src="dev-1", type="event", body={}, seq=3, epoch=9))
