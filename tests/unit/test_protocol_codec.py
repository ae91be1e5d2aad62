"""JSON and CBOR codecs: envelopes round-trip, sizes are checked first, and no payload, however
broken, makes `decode` raise anything but `ProtocolError`."""

from __future__ import annotations

import array
import json
import math
from collections.abc import Callable
from typing import Any, get_args

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekernel.protocol import (
    DEFAULT_MAX_PAYLOAD,
    Encoding,
    Envelope,
    MessageType,
    ProtocolError,
    decode,
    encode,
)
from edgekernel.protocol.envelope import MAX_BODY_DEPTH

# --- strategies -------------------------------------------------------------------------------

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
message_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)
seq_and_epoch = st.just((None, None)) | st.tuples(
    st.integers(0, 2**63 - 1), st.none() | st.integers(1, 2**63 - 1)
)
envelopes = st.builds(
    lambda seq_epoch, **fields: Envelope(seq=seq_epoch[0], epoch=seq_epoch[1], **fields),
    seq_and_epoch,
    id=message_ids,
    src=ids,
    ts=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    type=st.sampled_from(get_args(MessageType)),
    body=st.dictionaries(st.text(), json_values, max_size=6),
)
encodings = st.sampled_from(Encoding)

# anything JSON can spell, NaN and Infinity included, as the parsed value
loose_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# anything CBOR can carry: tags (known and unknown), bytes, big ints, simple values, int keys
cbor_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**300)
    | st.integers(max_value=-(2**64))
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.just(cbor2.undefined)
    | st.builds(cbor2.CBORSimpleValue, st.integers(0, 19) | st.integers(32, 255))
)
KNOWN_TAGS = [0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 32, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799]
tags = st.sampled_from(KNOWN_TAGS) | st.integers(0, 2**64 - 1)
loose_cbor = st.recursive(
    cbor_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
        | st.builds(cbor2.CBORTag, tags, inner)
    ),
    max_leaves=20,
)


VALID_FIELDS = {"v": st.just(1), "id": message_ids, "src": ids, "ts": st.just(1.5), "type": st.just("log")}


@st.composite
def envelope_shaped(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[Any, Any]:
    """A valid envelope map with an arbitrary body and up to two fields replaced (or added) with
    arbitrary values, so the fuzzing gets past "field required" into each validator."""
    fields: dict[Any, Any] = draw(st.fixed_dictionaries(VALID_FIELDS))
    fields["body"] = draw(st.dictionaries(st.text(max_size=8), values, max_size=4))
    for key in draw(st.sets(st.sampled_from([*VALID_FIELDS, "body", "seq", "epoch", "extra"]), max_size=2)):
        fields[key] = draw(values)
    return fields


REASONS = {"bad-payload", "oversized", "empty", "bad-cbor", "bad-envelope"}


def decodes_or_protocol_error(payload: bytes) -> None:
    """The codec's promise: an `Envelope` or a `ProtocolError`; any other exception fails the test.
    What decodes must also survive a trip through either encoding (a bridge re-encodes)."""
    try:
        envelope = decode(payload)
    except ProtocolError as err:
        outcome = err.reason
    else:
        outcome = "decoded"
        for encoding in Encoding:
            assert decode(encode(envelope, encoding)) == envelope
    assert outcome in {*REASONS, "decoded"}


def reason(payload: bytes | bytearray | memoryview, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(payload, **kwargs)
    return info.value.reason


def valid_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"v": 1, "id": "m1", "src": "dev-1", "ts": 1.5, "type": "log", "body": {}}
    return {**fields, **changes}


Serializer = Callable[[Any], bytes]


def as_json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


RAW = "@raw@"  # a placeholder value, swapped for raw bytes the serializers would not write


def with_raw(serialize: Serializer, raw: bytes, **changes: Any) -> bytes:
    payload: bytes = serialize(valid_fields(**changes))
    placeholder = json.dumps(RAW).encode() if serialize is as_json else cbor2.dumps(RAW)
    assert payload.count(placeholder) == 1
    return payload.replace(placeholder, raw)


def named(field: str) -> str:
    """A pattern for a `ProtocolError` message that names `field` as a problem."""
    return rf"(envelope: |; ){field}[.:]"


# --- round trips ------------------------------------------------------------------------------


@given(envelope=envelopes, encoding=encodings)
def test_decode_inverts_encode(envelope: Envelope, encoding: Encoding) -> None:
    payload = encode(envelope, encoding)
    decoded = decode(payload)
    assert decoded == envelope
    # a second trip gives the same bytes, so no int turned into a float or back on the way
    assert encode(decoded, encoding) == payload


@given(envelope=envelopes)
def test_json_is_what_json_loads_reads(envelope: Envelope) -> None:
    payload = encode(envelope, Encoding.JSON)
    data = json.loads(payload.decode("utf-8"))
    assert data == envelope.model_dump(exclude_none=True) | {"body": envelope.body}
    assert ("seq" in data) == (envelope.seq is not None)
    assert ("epoch" in data) == (envelope.epoch is not None)


@given(envelope=envelopes)
def test_cbor_is_a_plain_map(envelope: Envelope) -> None:
    data = cbor2.loads(encode(envelope, Encoding.CBOR))
    assert data == envelope.model_dump(exclude_none=True) | {"body": envelope.body}


def test_json_is_compact_utf8() -> None:
    envelope = Envelope(id="m1", src="d1", ts=2.0, type="event", body={"msg": "température ✓", "n": [1, 2]})
    expected = '{"v":1,"id":"m1","src":"d1","ts":2.0,"type":"event","body":{"msg":"température ✓","n":[1,2]}}'
    assert encode(envelope) == expected.encode("utf-8")
    assert decode(expected.encode("utf-8")) == envelope


@pytest.mark.parametrize("encoding", Encoding)
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytearray_and_memoryview_are_accepted(encoding: Encoding, wrap: type) -> None:
    envelope = Envelope.new(src="d1", type="telemetry", body={"x": 1.5}, seq=7)
    assert decode(wrap(encode(envelope, encoding))) == envelope


def test_json_may_start_with_white_space() -> None:
    assert decode(b" \r\n\t" + as_json(valid_fields())).src == "dev-1"


# --- size and emptiness -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", Encoding)
def test_the_limit_is_inclusive_and_checked_on_valid_payloads(encoding: Encoding) -> None:
    payload = encode(Envelope.new(src="d1", type="log", body={"line": "x" * 500}), encoding)
    assert decode(payload, max_size=len(payload)).body["line"] == "x" * 500
    assert reason(payload, max_size=len(payload) - 1) == "oversized"


@pytest.mark.parametrize("garbage", [b"\xff", b"{", b"\x00", b"\xa1"])
def test_oversized_garbage_is_refused_for_its_size(garbage: bytes) -> None:
    assert reason(garbage * (DEFAULT_MAX_PAYLOAD + 1)) == "oversized"
    assert reason(garbage * 101, max_size=100) == "oversized"


def test_oversized_payloads_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized payload reached a parser")

    for target, name in [
        (Envelope, "model_validate_json"),
        (Envelope, "model_validate"),
        (cbor2, "loads"),
        (cbor2, "CBORDecoder"),
    ]:
        monkeypatch.setattr(target, name, must_not_parse)
    body = {"samples": [{"ts": 1.0, "value": 2.0}] * 20_000}
    for payload in (as_json(valid_fields(body=body)), cbor2.dumps(valid_fields(body=body))):
        assert len(payload) > DEFAULT_MAX_PAYLOAD
        assert reason(payload) == "oversized"


def test_memoryview_size_counts_bytes_not_items() -> None:
    wide = memoryview(array.array("Q", [0] * 100))  # 100 items, 800 bytes
    assert reason(wide, max_size=200) == "oversized"


@pytest.mark.parametrize("payload", [b"", bytearray(), memoryview(b"")])
def test_empty_payload(payload: bytes | bytearray | memoryview) -> None:
    assert reason(payload) == "empty"


@pytest.mark.parametrize("payload", ["{}", None, 42, [b"{}"]])
def test_non_bytes_payload(payload: object) -> None:
    assert reason(payload) == "bad-payload"  # type: ignore[arg-type]


# --- fuzzing: nothing but ProtocolError -------------------------------------------------------


@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes(payload: bytes) -> None:
    decodes_or_protocol_error(payload)


@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_brace(payload: bytes) -> None:
    decodes_or_protocol_error(b"{" + payload)


@given(value=loose_json | envelope_shaped(loose_json))
def test_arbitrary_json(value: Any) -> None:
    decodes_or_protocol_error(json.dumps(value).encode())


@given(value=loose_cbor | envelope_shaped(loose_cbor))
def test_arbitrary_cbor(value: Any) -> None:
    decodes_or_protocol_error(cbor2.dumps(value))


@given(envelope=envelopes, encoding=encodings, data=st.data())
def test_truncated_payloads_never_decode(envelope: Envelope, encoding: Encoding, data: st.DataObject) -> None:
    payload = encode(envelope, encoding)
    cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
    with pytest.raises(ProtocolError):
        decode(payload[:cut])


@given(envelope=envelopes, encoding=encodings, data=st.data())
def test_bit_flipped_payloads(envelope: Envelope, encoding: Encoding, data: st.DataObject) -> None:
    payload = bytearray(encode(envelope, encoding))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        at = data.draw(st.integers(0, len(payload) - 1), label="at")
        payload[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    decodes_or_protocol_error(bytes(payload))


DEEP = 10_000


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        with_raw(as_json, b"[" * DEEP + b"]" * DEEP, body={"a": RAW}),
    ],
    ids=["arrays", "objects", "in-body"],
)
def test_deeply_nested_json(payload: bytes) -> None:
    assert reason(payload) in {"bad-envelope", "bad-cbor"}


@pytest.mark.parametrize(
    "payload",
    [
        b"\x81" * DEEP + b"\x80",  # arrays of one
        b"\x9f" * DEEP + b"\xff" * DEEP,  # indefinite-length arrays
        b"\xa1\x61a" * DEEP + b"\x00",  # maps of one
        b"\xd8\x63" * DEEP + b"\xa0",  # unknown tags wrapping tags
        b"\xd9\xd9\xf7" * DEEP + b"\xa0",  # self-describe tags
        b"\xd8\x1c\x81" * DEEP + b"\x00",  # shareable values
        with_raw(cbor2.dumps, b"\x81" * DEEP + b"\x80", body={"a": RAW}),
    ],
    ids=["arrays", "indefinite", "maps", "tags", "self-describe", "shareable", "in-body"],
)
def test_deeply_nested_cbor(payload: bytes) -> None:
    assert reason(payload) == "bad-cbor"


def nested_body(levels: int) -> dict[str, Any]:
    """A body nested `levels` deep, counting the body object itself as level 1."""
    value: list[Any] = []
    for _ in range(levels - 2):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize("serialize", [as_json, cbor2.dumps], ids=["json", "cbor"])
def test_bodies_nest_at_most_max_body_depth_levels(serialize: Serializer) -> None:
    deepest = decode(serialize(valid_fields(body=nested_body(MAX_BODY_DEPTH))))
    for encoding in Encoding:
        assert decode(encode(deepest, encoding)) == deepest
    with pytest.raises(ProtocolError, match=f"body: .*nested more than {MAX_BODY_DEPTH} levels") as info:
        decode(serialize(valid_fields(body=nested_body(MAX_BODY_DEPTH + 1))))
    assert info.value.reason == "bad-envelope"


def test_nesting_near_the_parser_limits_gives_an_envelope_or_an_error() -> None:
    for depth in (50, 150, 199, 200, 250, 350, 399, 400):
        decodes_or_protocol_error(with_raw(cbor2.dumps, b"\x81" * depth + b"\x80", body={"a": RAW}))
        decodes_or_protocol_error(with_raw(as_json, b"[" * depth + b"]" * depth, body={"a": RAW}))


# --- what the envelope refuses, in both codecs ------------------------------------------------


NON_FINITE_JSON = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]
NON_FINITE_CBOR = [cbor2.dumps(x) for x in (math.nan, math.inf, -math.inf)]
NON_FINITE_CBOR += [b"\xf9\x7e\x00", b"\xf9\x7c\x00", b"\xfa\x7f\xc0\x00\x00"]  # float16/32 NaN, Inf


@pytest.mark.parametrize(
    ("serialize", "bad"),
    [(as_json, raw) for raw in NON_FINITE_JSON] + [(cbor2.dumps, raw) for raw in NON_FINITE_CBOR],
)
def test_non_finite_numbers_are_refused(serialize: Serializer, bad: bytes) -> None:
    for where, changes in [("ts", {"ts": RAW}), ("body", {"body": {"a": [{"b": RAW}]}})]:
        with pytest.raises(ProtocolError, match=named(where)) as info:
            decode(with_raw(serialize, bad, **changes))
        assert info.value.reason == "bad-envelope"


@pytest.mark.parametrize("serialize", [as_json, cbor2.dumps], ids=["json", "cbor"])
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"extra": 1}, "extra"),
        ({"v": 2}, "v"),
        ({"v": 0}, "v"),
        ({"v": "1"}, "v"),
        ({"v": True}, "v"),
        ({"v": 1.0}, "v"),
        ({"v": None}, "v"),
        ({"src": "Dev"}, "src"),
        ({"src": "a/b"}, "src"),
        ({"id": ""}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"seq": -1}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 1.0}, "seq"),
        ({"ts": -0.5}, "ts"),
        ({"ts": "1.5"}, "ts"),
        ({"ts": False}, "ts"),
        ({"type": "telemetrie"}, "type"),
        ({"body": []}, "body"),
        ({"body": None}, "body"),
        ({"type": None}, "type"),
    ],
)
def test_bad_fields_are_refused_and_named(serialize: Serializer, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError, match=named(field)) as info:
        decode(serialize(valid_fields(**changes)))
    assert info.value.reason == "bad-envelope"


@pytest.mark.parametrize("serialize", [as_json, cbor2.dumps], ids=["json", "cbor"])
@pytest.mark.parametrize("field", ["id", "src", "ts", "type", "body"])
def test_missing_fields_are_named(serialize: Serializer, field: str) -> None:
    fields = valid_fields()
    del fields[field]
    with pytest.raises(ProtocolError, match=f"{field}: Field required"):
        decode(serialize(fields))


@pytest.mark.parametrize(
    "value",
    [b"raw", cbor2.undefined, cbor2.CBORSimpleValue(99), cbor2.CBORTag(1234, 5), {"a"}],
    ids=["bytes", "undefined", "simple", "tag", "set"],
)
def test_cbor_values_json_cannot_spell_are_refused_in_the_body(value: object) -> None:
    assert reason(cbor2.dumps(valid_fields(body={"x": value}))) == "bad-envelope"


def test_cbor_map_keys_other_than_strings_are_refused_while_decoding() -> None:
    """Keys crafted to share one hash would make building the map take quadratic time."""
    assert reason(cbor2.dumps(valid_fields(body={"x": {1: 2}}))) == "bad-cbor"


@pytest.mark.parametrize(
    "payload",
    [
        cbor2.dumps([valid_fields()]),
        cbor2.dumps("envelope"),
        cbor2.dumps(None),
        b" ",
    ],
)
def test_a_cbor_envelope_is_a_map(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="an envelope is a map") as info:
        decode(payload)
    assert info.value.reason == "bad-envelope"


def test_trailing_bytes_are_refused_in_both_encodings() -> None:
    assert reason(cbor2.dumps(valid_fields()) + b"\x00") == "bad-cbor"
    assert reason(cbor2.dumps(valid_fields()) * 2) == "bad-cbor"
    assert reason(as_json(valid_fields()) + b"{}") == "bad-envelope"


def test_many_problems_are_summarised() -> None:
    with pytest.raises(ProtocolError, match=r"\(\+\d+ more\)"):
        decode(cbor2.dumps({"v": 3, "id": "", "src": "", "ts": "x", "type": "y", "body": 1}))


@pytest.mark.parametrize(
    "payload",
    [
        with_raw(as_json, b'"m\xff"', id=RAW),  # invalid UTF-8 in JSON
        with_raw(as_json, b'"\\ud800"', body={"a": RAW}),  # a lone surrogate
        with_raw(cbor2.dumps, b"\x62\xff\xfe", body={"a": RAW}),  # invalid UTF-8 in CBOR text
        with_raw(cbor2.dumps, b"\x63\xed\xa0\x80", body={"a": RAW}),  # an encoded surrogate
    ],
)
def test_broken_text_is_refused(payload: bytes) -> None:
    assert reason(payload) in {"bad-envelope", "bad-cbor"}


# --- seq spaces ---------------------------------------------------------------------------------


def test_an_envelope_without_epoch_is_in_epoch_0_and_epoch_0_is_never_written() -> None:
    old = decode(as_json(valid_fields(type="telemetry", seq=5)))
    assert (old.epoch, old.seq_space) == (None, 0)
    assert b"epoch" not in encode(Envelope.new(src="d", type="telemetry", body={}, seq=1, epoch=0))
    new = Envelope.new(src="d", type="telemetry", body={}, seq=1, epoch=2**63 - 1)
    assert decode(encode(new, Encoding.CBOR)).seq_space == 2**63 - 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epoch": 0, "seq": 1}, "epoch"),
        ({"epoch": 2**63, "seq": 1}, "epoch"),
        ({"epoch": -1, "seq": 1}, "epoch"),
        ({"epoch": 1.0, "seq": 1}, "epoch"),
        ({"epoch": True, "seq": 1}, "epoch"),
        ({"epoch": 7}, "envelope"),  # an epoch without a seq names nothing
    ],
)
@pytest.mark.parametrize("serialize", [as_json, cbor2.dumps])
def test_bad_epochs_are_refused(changes: dict[str, Any], field: str, serialize: Serializer) -> None:
    with pytest.raises(ProtocolError, match=named(field) if field != "envelope" else "epoch names a seq"):
        decode(serialize(valid_fields(**changes)))
