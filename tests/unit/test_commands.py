"""Signed commands: a command signed by the fleet key verifies on its device in either encoding, and
anything else — unsigned, tampered, replayed, expired, early, for another device, signed by an unknown
key, or not a command at all — is refused with a `ProtocolError` naming the reason."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import stat
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue

from edgekernel.protocol import (
    CommandBody,
    CommandVerifier,
    Encoding,
    Envelope,
    FleetKey,
    FleetVerifier,
    ProtocolError,
    ReplyBody,
    ReplyCache,
    decode,
    encode,
    sign_command,
    signing_payload,
)
from edgekernel.protocol.commands import MAX_SAFE_INTEGER, canonical_json

KEY = FleetKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
OTHER_KEY = FleetKey(Ed25519PrivateKey.from_private_bytes(bytes(32)))
T0 = 1_700_000_000.0
SKEW = 5.0
TTL = 60.0

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | finite
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
encodings = st.sampled_from(Encoding)


def gate(**changes: Any) -> CommandVerifier:
    options: dict[str, Any] = {"device": "dev-1", "max_skew_s": SKEW, **changes}
    return CommandVerifier(FleetVerifier([KEY.public_key]), **options)


def command(key: FleetKey = KEY, **changes: Any) -> Envelope:
    options: dict[str, Any] = {"src": "fleet", "device": "dev-1", "name": "ping", "ttl_s": TTL, "now": T0}
    return sign_command(key, **{**options, **changes})


def signed(body: dict[str, JsonValue], *, key: FleetKey = KEY, **envelope: Any) -> Envelope:
    """An envelope with exactly this body, signed as it stands: for bodies `sign_command` won't build."""
    fields: dict[str, Any] = {"id": "c1", "src": "fleet", "ts": T0, "type": "cmd", **envelope}
    unsigned = Envelope(**fields, body=body)
    sig = base64.b64encode(key.sign(signing_payload(unsigned))).decode()
    return Envelope(**fields, body={**body, "sig": sig})


def body(**changes: JsonValue) -> dict[str, JsonValue]:
    base: dict[str, JsonValue] = {
        "name": "ping",
        "args": {},
        "device": "dev-1",
        "issued_at": T0,
        "expires_at": T0 + TTL,
        "key": KEY.key_id,
    }
    return {**base, **changes}


def refusal(verifier: CommandVerifier, envelope: Envelope, now: float = T0) -> str:
    with pytest.raises(ProtocolError) as caught:
        verifier.verify(envelope, now=now)
    return caught.value.reason


# --- the signing encoding ---------------------------------------------------------------------


def test_signing_payload_matches_the_documented_vector() -> None:
    """A vector for other implementations (checked against Node's crypto.verify and JSON.stringify)."""
    envelope = signed(body(args={"n": 1, "x": 0.5, "s": "é"}))
    assert KEY.key_id == "56475aa75463474c"
    assert (
        signing_payload(envelope)
        == (
            '{"body":{"args":{"n":1,"s":"é","x":0.5},"device":"dev-1","expires_at":1700000060,'
            '"issued_at":1700000000,"key":"56475aa75463474c","name":"ping"},"id":"c1","src":"fleet",'
            '"ts":1700000000,"type":"cmd","v":1}'
        ).encode()
    )
    assert envelope.body["sig"] == (
        "2ol6MI48PAlRgRPExid+RcH6Sr06CSsXmfv5Ag+o8FeeM3wRSOlp8mgh0IkB85Pnr+AMVxuCE/6bGN6I5MMYAQ=="
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (-5e-324, "-5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352825856.0, "295147905179352830000"),
        (9.999999999999997e22, "9.999999999999997e+22"),
        (1e23, "1e+23"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (333333333.3333333, "333333333.3333333"),
        (123.0, "123"),
        (-1.5, "-1.5"),
    ],
)
def test_numbers_are_written_as_rfc_8785_says(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@given(finite)
def test_every_finite_number_reads_back_exactly(number: float) -> None:
    assert float(canonical_json(number)) == number


def test_canonical_json_sorts_by_utf16_and_escapes_like_javascript() -> None:
    value: JsonValue = {"\ue000": 1, "\U0001f600": 2, "b": [None, True, False], "a": '\x01"\\\n\x7f\u2028'}
    assert canonical_json(value) == (
        '{"a":"\\u0001\\"\\\\\\n\x7f\u2028","b":[null,true,false],"\U0001f600":2,"\ue000":1}'.encode()
    )


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, "\ud800", {"\udfff": 1}])
def test_values_json_cannot_hold_exactly_cannot_be_signed(value: JsonValue) -> None:
    with pytest.raises(ProtocolError) as caught:
        command(args={"x": value})
    assert caught.value.reason == "bad-body"


# --- round trips ------------------------------------------------------------------------------


@given(args=st.dictionaries(st.text(max_size=8), json_values, max_size=5), encoding=encodings)
def test_a_signed_command_verifies_after_encoding(args: dict[str, JsonValue], encoding: Encoding) -> None:
    envelope = command(args=args, name="set-rate")
    verified = gate().verify(decode(encode(envelope, encoding)), now=T0 + 1)
    assert (verified.id, verified.name, verified.src, verified.device) == (
        envelope.id,
        "set-rate",
        "fleet",
        "dev-1",
    )
    assert verified.args == args
    assert (verified.issued_at, verified.expires_at, verified.key) == (T0, T0 + TTL, KEY.key_id)


def test_a_command_re_encoded_across_codecs_still_verifies() -> None:
    envelope = command(args={"rate": 2.5, "on": True})
    via_cbor = decode(encode(decode(encode(envelope, Encoding.CBOR)), Encoding.JSON))
    assert gate().verify(via_cbor, now=T0).args == {"rate": 2.5, "on": True}


@pytest.mark.parametrize("encoding", list(Encoding))
def test_replies_round_trip(encoding: Encoding) -> None:
    for reply in (
        ReplyBody.success("c1", {"rtt_ms": 1.5, "none": None}),
        ReplyBody.success("c1"),
        ReplyBody.failure("c1", "expired", "too late"),
    ):
        envelope = reply.to_envelope("dev-1", ts=T0)
        assert envelope.type == "reply"
        assert ReplyBody.from_envelope(decode(encode(envelope, encoding))) == reply


@pytest.mark.parametrize(
    "reply",
    [
        {"command": "c1", "ok": True, "error": {"reason": "x", "message": "y"}},
        {"command": "c1", "ok": False},
        {"command": "c1", "ok": False, "result": 1, "error": {"reason": "x", "message": "y"}},
        {"command": "", "ok": True},
        {"ok": True},
    ],
)
def test_inconsistent_replies_are_refused(reply: dict[str, JsonValue]) -> None:
    with pytest.raises(ProtocolError) as caught:
        ReplyBody.from_envelope(Envelope(id="r1", src="dev-1", ts=T0, type="reply", body=reply))
    assert caught.value.reason == "bad-body"


# --- refusals ---------------------------------------------------------------------------------


def without_sig(envelope: Envelope) -> Envelope:
    return envelope.model_copy(update={"body": {k: v for k, v in envelope.body.items() if k != "sig"}})


def with_body(envelope: Envelope, **changes: JsonValue) -> Envelope:
    return envelope.model_copy(update={"body": {**envelope.body, **changes}})


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (without_sig(command()), "unsigned"),
        (with_body(command(), sig=""), "unsigned"),
        (with_body(command(), sig=None), "unsigned"),
        (command().model_copy(update={"type": "event"}), "wrong-type"),
        (with_body(command(), sig=7), "bad-body"),
        (with_body(command(), extra=1), "bad-body"),
        (signed(body(name="Not An Id")), "bad-body"),
        (signed(body(expires_at=T0)), "bad-body"),
        (signed(body(args=[])), "bad-body"),
        (command(OTHER_KEY), "unknown-key"),
        (with_body(command(), key=OTHER_KEY.key_id), "unknown-key"),
        (signed(body(), key=OTHER_KEY), "bad-signature"),
        (with_body(command(), name="reboot"), "bad-signature"),
        (with_body(command(), sig="not base64!"), "bad-signature"),
        (with_body(command(), sig=base64.b64encode(bytes(63)).decode()), "bad-signature"),
        (with_body(command(), sig=base64.b64encode(bytes(64)).decode()), "bad-signature"),
        (command(device="dev-2"), "wrong-target"),
        (command(ttl_s=3600.5), "ttl-too-long"),
        (command(now=T0 + SKEW + 0.001), "not-yet-valid"),
        (command(now=T0 - TTL), "expired"),
    ],
)
def test_each_refusal_has_its_reason(envelope: Envelope, reason: str) -> None:
    assert refusal(gate(), envelope) == reason


def test_a_refused_command_is_not_remembered() -> None:
    verifier = gate()
    refusal(verifier, command(device="dev-2"))
    refusal(verifier, command(now=T0 - TTL))
    assert verifier.remembered == 0


@pytest.mark.parametrize(
    ("now", "accepted"),
    [
        (T0 - SKEW - 0.001, False),
        (T0 - SKEW, True),
        (T0, True),
        (T0 + TTL - 0.001, True),
        (T0 + TTL, False),
    ],
)
def test_validity_window_boundaries(now: float, accepted: bool) -> None:
    verifier = gate()
    if accepted:
        verifier.verify(command(), now=now)
    else:
        assert refusal(verifier, command(), now) in {"not-yet-valid", "expired"}


# --- tampering --------------------------------------------------------------------------------


@given(encoding=encodings, position=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipping_any_byte_never_yields_a_different_accepted_command(
    encoding: Encoding, position: int, mask: int
) -> None:
    original = command(args={"rate": 2.5, "mode": "fast", "n": 3})
    payload = bytearray(encode(original, encoding))
    payload[position % len(payload)] ^= mask
    try:
        tampered = decode(bytes(payload))
        gate().verify(tampered, now=T0)
    except ProtocolError:
        return
    # accepted: only possible if the flip left the same values (e.g. a digit past a float's precision)
    assert signing_payload(tampered) == signing_payload(original)


FIELDS = ["id", "src", "ts", "name", "args", "device", "issued_at", "expires_at", "key"]


@given(field=st.sampled_from(FIELDS), value=any_json | ids | finite, encoding=encodings)
def test_changing_any_signed_field_is_refused(field: str, value: JsonValue, encoding: Encoding) -> None:
    original = command(args={"rate": 2.5})
    data = original.model_dump(exclude_none=True)
    target = data if field in {"id", "src", "ts"} else data["body"]
    if target[field] == value:
        return
    target[field] = value
    try:
        tampered = decode(encode(Envelope.model_validate(data), encoding))
    except (ProtocolError, ValueError):
        return
    assert refusal(gate(), tampered) != ""


def test_adding_a_seq_breaks_the_signature() -> None:
    assert refusal(gate(), command().model_copy(update={"seq": 5})) == "bad-signature"


def test_an_equivalent_sig_spelling_is_refused() -> None:
    """The last base64 digit of a 64-byte value has 4 unused bits: only the canonical spelling counts."""
    envelope = command()
    sig = str(envelope.body["sig"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(sig)
    assert refusal(gate(), with_body(envelope, sig=twin)) == "bad-signature"


# --- replays and the reply cache --------------------------------------------------------------


def test_a_replay_is_refused_but_gets_the_first_reply_again() -> None:
    verifier, replies = gate(), ReplyCache()
    envelope = command()
    first = verifier.verify(envelope, now=T0)
    reply = ReplyBody.success(first.id, {"pong": True}).to_envelope("dev-1", ts=T0)
    replies.put(first, reply, now=T0)
    replies.put(first, ReplyBody.success(first.id, "again").to_envelope("dev-1", ts=T0), now=T0)
    for encoding in Encoding:
        assert refusal(verifier, decode(encode(envelope, encoding)), T0 + 1) == "replayed"
    assert replies.get(envelope.id, now=T0 + 1) == reply
    assert replies.get(envelope.id, now=T0 + TTL) is None
    assert refusal(verifier, envelope, T0 + TTL) == "expired"
    assert len(replies) == 0


def test_ids_are_forgotten_when_their_commands_expire() -> None:
    verifier = gate()
    for step in range(5):
        verifier.verify(command(now=T0 + step), now=T0 + step)
    assert verifier.remembered == 5
    verifier.verify(command(now=T0 + TTL + 2.5), now=T0 + TTL + 2.5)
    assert verifier.remembered == 3


def test_the_replay_window_bounds_memory_and_never_lets_a_replay_through() -> None:
    verifier = gate(replay_window=3)
    sent = [command(now=T0 + step) for step in range(10)]
    for envelope in sent:
        verifier.verify(envelope, now=T0 + 9)
        assert verifier.remembered <= 3
    for envelope in sent:
        assert refusal(verifier, envelope, T0 + 9) in {"replayed", "replay-cache-full"}
    assert refusal(verifier, command(now=T0 + 5), T0 + 9) == "replay-cache-full"
    verifier.verify(command(now=T0 + 9.5), now=T0 + 9.5)
    assert verifier.remembered == 3


def test_the_reply_cache_is_bounded() -> None:
    verifier, replies = gate(), ReplyCache(capacity=2)
    for step in range(4):
        accepted = verifier.verify(command(now=T0 + step), now=T0 + step)
        replies.put(accepted, ReplyBody.success(accepted.id).to_envelope("dev-1", ts=T0), now=T0 + step)
    assert len(replies) == 2


@pytest.mark.parametrize("window", [0, -1])
def test_the_window_holds_at_least_one(window: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        gate(replay_window=window)


# --- keys -------------------------------------------------------------------------------------


def test_a_key_saves_owner_only_and_loads_back(tmp_path: Path) -> None:
    key = FleetKey.generate()
    path = tmp_path / "fleet.pem"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = FleetKey.load(path)
    assert (loaded.key_id, loaded.public_key) == (key.key_id, key.public_key)
    with pytest.raises(FileExistsError):
        FleetKey.generate().save(path)
    assert FleetKey.load(path).key_id == key.key_id


def test_commands_signed_by_a_loaded_key_verify_with_its_public_pem(tmp_path: Path) -> None:
    key = FleetKey.generate()
    key.save(tmp_path / "fleet.pem")
    (tmp_path / "fleet.pub").write_bytes(key.public_pem())
    keys = FleetVerifier.load(tmp_path / "fleet.pub")
    assert keys.key_ids == {key.key_id}
    assert FleetVerifier([key.public_pem()]).key_ids == {key.key_id}
    verifier = CommandVerifier(keys, device="dev-1")
    envelope = sign_command(
        FleetKey.load(tmp_path / "fleet.pem"), src="fleet", device="dev-1", name="ping", ttl_s=5
    )
    assert verifier.verify(envelope).name == "ping"


def test_the_key_id_is_the_sha256_prefix_of_the_raw_public_key() -> None:

    assert KEY.key_id == hashlib.sha256(KEY.public_key).hexdigest()[:16]
    assert FleetVerifier().add(KEY.public_key) == KEY.key_id


P256 = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    "load",
    [
        lambda: FleetKey.from_pem(b"not a key"),
        lambda: FleetKey.from_pem(KEY.public_pem()),
        lambda: FleetKey.from_pem(
            P256.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ),
        lambda: FleetVerifier([KEY.to_pem()]),
        lambda: FleetVerifier(
            [
                P256.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ]
        ),
        lambda: FleetVerifier([bytes(31)]),
    ],
)
def test_what_is_not_an_ed25519_key_is_refused(load: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        load()
    assert caught.value.reason == "bad-key"


def test_a_verifier_for_a_bad_device_id_is_refused() -> None:
    with pytest.raises(ProtocolError):
        gate(device="Dev 1")


@pytest.mark.parametrize(
    "changes",
    [{"ttl_s": 0}, {"ttl_s": float("nan")}, {"device": "Dev 1"}, {"name": ""}, {"src": "a/b"}, {"now": -1.0}],
)
def test_sign_command_refuses_what_would_not_verify(changes: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as caught:
        command(**changes)
    assert caught.value.reason == "bad-body"


# --- whatever arrives -------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_payloads_are_refused_with_protocol_errors(payload: bytes) -> None:
    try:
        gate().verify(decode(payload), now=T0)
    except ProtocolError:
        return
    pytest.fail("an arbitrary payload was accepted")


@given(st.dictionaries(st.text(max_size=10), any_json, max_size=8), st.sampled_from(["cmd", "reply"]))
def test_arbitrary_bodies_are_refused_with_protocol_errors(data: dict[str, JsonValue], type_: str) -> None:
    envelope = Envelope.model_validate({"id": "c1", "src": "fleet", "ts": T0, "type": type_, "body": data})
    with pytest.raises(ProtocolError):
        gate().verify(envelope, now=T0)
    with contextlib.suppress(ProtocolError):
        ReplyBody.from_envelope(envelope)


@given(
    overrides=st.dictionaries(st.sampled_from([*FIELDS[3:], "sig", "extra"]), any_json, max_size=4),
    resign=st.booleans(),
)
def test_near_valid_bodies_give_only_protocol_errors(overrides: dict[str, JsonValue], resign: bool) -> None:
    original = command()
    changed = {**original.body, **overrides}
    try:
        unsigned = {k: v for k, v in changed.items() if k != "sig"}
        envelope = signed(unsigned, id=original.id) if resign else with_body(original, **overrides)
    except ProtocolError:
        return
    try:
        accepted = gate().verify(envelope, now=T0)
    except ProtocolError:
        return
    assert resign or signing_payload(envelope) == signing_payload(original)
    assert CommandBody.from_envelope(envelope).device == accepted.device == "dev-1"


def test_cbor_maps_with_byte_strings_are_refused() -> None:
    data = command().model_dump(exclude_none=True)
    data["body"]["name"] = b"ping"
    with pytest.raises(ProtocolError):
        gate().verify(decode(cbor2.dumps(data)), now=T0)


def test_a_command_named_otherwise_than_its_topic_is_refused_and_not_remembered() -> None:
    verifier = gate()
    stats = command(name="stats")
    with pytest.raises(ProtocolError) as caught:
        verifier.verify(stats, now=T0, topic_name="ping")
    assert caught.value.reason == "name-mismatch"
    assert verifier.remembered == 0
    assert verifier.verify(stats, now=T0, topic_name="stats").name == "stats"


@pytest.mark.parametrize("what", ["missing", "directory", "garbage"])
def test_a_fleet_key_file_that_cannot_be_loaded_is_named(tmp_path: Path, what: str) -> None:
    good, path = tmp_path / "good.pub", tmp_path / "fleet.pub"
    good.write_bytes(KEY.public_pem())
    if what == "directory":
        path.mkdir()
    elif what == "garbage":
        path.write_bytes(b"not a key")
    with pytest.raises(ProtocolError) as caught:
        FleetVerifier.load(good, path)
    assert str(path) in str(caught.value)
    assert caught.value.reason == ("bad-key" if what == "garbage" else "unreadable-key")
