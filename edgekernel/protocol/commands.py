"""Signed fleet → device commands and their replies, sans I/O (apart from reading and writing key files).

A command is an envelope of type ``cmd`` whose body (`CommandBody`) holds the command ``name``, its
``args`` (a JSON object), the target ``device``, ``issued_at`` and ``expires_at`` (Unix seconds), the
``key`` id of the fleet key that signed it, and ``sig``. The envelope ``id`` is the command id: a device
remembers it to refuse replays, and the reply (`ReplyBody`, type ``reply``) names it.

Key id: the first 16 hex digits (lower case) of the SHA-256 of the 32-byte raw ed25519 public key.

Signature: ``sig`` is the standard base64 (RFC 4648 §4, padded, no line breaks) of the 64-byte ed25519
signature of the signing payload (`signing_payload`), which is

1. the envelope as a JSON object with the members it has on the wire — ``v``, ``id``, ``src``, ``seq``
   (only when present), ``ts``, ``type``, ``body`` — where ``body`` has every member except ``sig``;
2. serialized by the JSON Canonicalization Scheme (RFC 8785): object members sorted by the UTF-16 code
   units of their names; no white space; strings escaped as ECMAScript's ``JSON.stringify`` does (``\\"``,
   ``\\\\``, ``\\b \\f \\n \\r \\t``, other characters below U+0020 as ``\\u00xx``, everything else literal);
   numbers written as ECMAScript writes doubles (``1.0`` → ``1``, ``1e21`` → ``1e+21``, ``1e-7`` → ``1e-7``,
   ``-0.0`` → ``0``);
3. encoded as UTF-8.

As in I-JSON (RFC 7493), integers must lie within ±(2**53 - 1) and strings must be valid Unicode, or
the command is refused ("bad-body"): beyond that, two different values could share one signature.
Numbers compare by value, so a command handler treats ``1`` and ``1.0`` alike. The payload does not
depend on the encoding, so a command signed as JSON verifies after a trip through CBOR. A worked
example (key, payload, signature) is in tests/unit/test_commands.py.

`CommandVerifier.verify` refuses with a `ProtocolError` whose reason is one of: wrong-type, unsigned,
bad-body, unknown-key, bad-signature, wrong-target, ttl-too-long, not-yet-valid, expired, replayed,
replay-cache-full. Loading something that is not an ed25519 key gives "bad-key".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Generic, Self, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from edgekernel.protocol.bodies import _Body, _first_error
from edgekernel.protocol.envelope import Envelope, Id, MessageId, MessageType, Timestamp
from edgekernel.protocol.errors import ProtocolError
from edgekernel.protocol.topics import check_id

MAX_SAFE_INTEGER = 2**53 - 1
KEY_ID_HEX = 16

KeyId = Annotated[str, Field(pattern=f"^[0-9a-f]{{{KEY_ID_HEX}}}$")]


def canonical_json(value: JsonValue) -> bytes:
    """RFC 8785 canonical JSON as UTF-8; `ValueError` for what I-JSON cannot hold exactly."""
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError:
        raise ValueError("a string is not valid Unicode (lone surrogate)") from None


def _write(value: JsonValue, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is beyond ±(2**53 - 1); send it as a string")
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            out.append("," if index else "")
            _write(item, out)
        out.append("]")
    else:
        out.append("{")
        for index, name in enumerate(sorted(value, key=_utf16)):
            out.append(("," if index else "") + json.dumps(name, ensure_ascii=False) + ":")
            _write(value[name], out)
        out.append("}")


def _utf16(name: str) -> bytes:
    try:
        return name.encode("utf-16-be")
    except UnicodeEncodeError:
        raise ValueError("a member name is not valid Unicode (lone surrogate)") from None


def _number(x: float) -> str:
    """ECMAScript's Number::toString, from the shortest round-tripping digits that `repr` gives."""
    if not math.isfinite(x):
        raise ValueError("numbers must be finite")
    if x == 0:
        return "0"
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        shift = point - 1
        text = digits[0] + (f".{digits[1:]}" if count > 1 else "") + f"e{shift:+d}"
    return ("-" if x < 0 else "") + text


def signing_payload(envelope: Envelope) -> bytes:
    """The bytes a command's signature covers (see the module docstring); `ProtocolError` if none."""
    data = envelope.model_dump(mode="python", exclude_none=True)
    data["body"] = {name: value for name, value in envelope.body.items() if name != "sig"}
    try:
        return canonical_json(data)
    except (ValueError, RecursionError) as err:
        raise ProtocolError("bad-body", f"cannot be signed: {err}") from None


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class FleetKey:
    """The fleet's private ed25519 key, which signs commands. Kept in a PEM file (PKCS #8, mode 0600)."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = _raw(private.public_key())
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> FleetKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> FleetKey:
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise ProtocolError("bad-key", f"not an unencrypted PEM private key: {err}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ProtocolError("bad-key", f"a fleet key is ed25519, not {type(private).__name__}")
        return cls(private)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FleetKey:
        """Read a key file; `OSError` if it cannot be read, `ProtocolError` ("bad-key") if it is no key."""
        return cls.from_pem(Path(path).read_bytes())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a new key file readable by its owner only; `FileExistsError` rather than overwrite one."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as file:
            os.fchmod(fd, 0o600)
            file.write(self.to_pem())
            file.flush()
            os.fsync(fd)

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


class FleetVerifier:
    """The fleet public keys a device trusts, by key id; each given raw (32 bytes) or as PEM."""

    def __init__(self, public_keys: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for public_key in public_keys:
            self.add(public_key)

    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> FleetVerifier:
        """Read PEM files; `ProtocolError` naming the file if one cannot be read ("unreadable-key": missing,
        a folder, no permission) or is no key ("bad-key")."""
        verifier = cls()
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                why = err.strerror or type(err).__name__
                raise ProtocolError("unreadable-key", f"cannot read fleet key {path}: {why}") from None
            try:
                verifier.add(data)
            except ProtocolError as err:
                raise ProtocolError(err.reason, f"fleet key {path}: {err}") from None
        return verifier

    def add(self, public_key: bytes) -> str:
        """Trust one more key; returns its key id."""
        try:
            if len(public_key) == 32:
                key: object = Ed25519PublicKey.from_public_bytes(bytes(public_key))
            else:
                key = serialization.load_pem_public_key(public_key)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise ProtocolError("bad-key", f"not a raw or PEM public key: {err}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ProtocolError("bad-key", f"a fleet key is ed25519, not {type(key).__name__}")
        self._keys[key_id(_raw(key))] = key
        return key_id(_raw(key))

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, key: str, signature: bytes, data: bytes) -> None:
        public = self._keys.get(key)
        if public is None:
            raise ProtocolError("unknown-key", f"signed by key {key!r}, which this device does not trust")
        try:
            public.verify(signature, data)
        except InvalidSignature:
            raise ProtocolError("bad-signature", f"the signature does not match (key {key})") from None


class CommandBody(_Body):
    ENVELOPE_TYPE: ClassVar[MessageType] = "cmd"
    name: Id
    args: dict[str, JsonValue] = Field(default_factory=dict)
    device: Id
    issued_at: Timestamp
    expires_at: Timestamp
    key: KeyId
    sig: Annotated[str, Field(min_length=1, max_length=128)]

    @model_validator(mode="after")
    def _expires_after_issue(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must come after issued_at")
        return self


class ReplyError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    reason: Annotated[str, Field(min_length=1, max_length=64)]
    message: Annotated[str, Field(max_length=1024)]


class ReplyBody(_Body):
    """The answer to command ``command``: a JSON ``result`` when ``ok``, else an ``error``."""

    ENVELOPE_TYPE: ClassVar[MessageType] = "reply"
    command: MessageId
    ok: bool
    result: JsonValue = None
    error: ReplyError | None = None

    @model_validator(mode="after")
    def _result_or_error(self) -> Self:
        if self.ok and self.error is not None:
            raise ValueError("a successful reply carries no error")
        if not self.ok and (self.error is None or self.result is not None):
            raise ValueError("a failed reply carries an error and no result")
        return self

    @classmethod
    def success(cls, command: str, result: JsonValue = None) -> ReplyBody:
        return cls(command=command, ok=True, result=result)

    @classmethod
    def failure(cls, command: str, reason: str, message: str) -> ReplyBody:
        return cls(command=command, ok=False, error=ReplyError(reason=reason, message=message[:1024]))


def sign_command(
    key: FleetKey,
    *,
    src: str,
    device: str,
    name: str,
    args: Mapping[str, JsonValue] | None = None,
    ttl_s: float,
    now: float | None = None,
) -> Envelope:
    """A ``cmd`` envelope for ``device``, valid for ``ttl_s`` seconds from ``now``, signed by ``key``."""
    issued = time.time() if now is None else now
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ProtocolError("bad-body", f"ttl_s must be a positive number of seconds, not {ttl_s}")
    body: dict[str, JsonValue] = {
        "name": name,
        "args": dict(args or {}),
        "device": device,
        "issued_at": issued,
        "expires_at": issued + ttl_s,
        "key": key.key_id,
    }
    try:
        unsigned = Envelope(id=uuid.uuid4().hex, src=src, ts=issued, type="cmd", body=body)
        sig = base64.b64encode(key.sign(signing_payload(unsigned))).decode()
        signed = unsigned.model_copy(update={"body": {**body, "sig": sig}})
    except ValidationError as err:
        raise ProtocolError("bad-body", f"cannot build the command: {_first_error(err)}") from None
    CommandBody.from_envelope(signed)
    return signed


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    id: str
    src: str
    name: str
    args: dict[str, JsonValue]
    device: str
    issued_at: float
    expires_at: float
    key: str


_V = TypeVar("_V")


class _Expiring(Generic[_V]):
    """At most `capacity` entries, each dropped at its expiry; when full, the soonest to expire goes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: dict[str, tuple[float, _V]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> _V | None:
        return self._items[key][1] if key in self._items else None

    def purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            del self._items[heapq.heappop(self._heap)[1]]

    def put(self, key: str, expires_at: float, value: _V) -> float | None:
        """Store unless present; returns the latest expiry among entries evicted to make room, if any."""
        if key in self._items:
            return None
        self._items[key] = (expires_at, value)
        heapq.heappush(self._heap, (expires_at, key))
        evicted: float | None = None
        while len(self._items) > self.capacity:
            evicted, old = heapq.heappop(self._heap)
            del self._items[old]
        return evicted


class CommandVerifier:
    """A device's gate for commands: authentic, for this device, in time, and not seen before.

    A command is in time when ``issued_at - max_skew_s <= now < expires_at`` and it lives no longer than
    ``max_ttl_s``. The ids of accepted commands are remembered until they expire (after which a replay
    is refused as expired), at most ``replay_window`` of them, so memory stays bounded however fast
    commands come. When the window is full, the id that expires soonest is forgotten and its expiry
    becomes a floor: a command expiring no later than the floor is refused ("replay-cache-full"), since
    it may be one that was forgotten. A replay is never accepted; under overload a fresh command may be
    refused, and the fleet may re-sign it.
    """

    def __init__(
        self,
        verifier: FleetVerifier,
        *,
        device: str,
        max_skew_s: float = 30.0,
        max_ttl_s: float = 3600.0,
        replay_window: int = 4096,
    ) -> None:
        if not (max_skew_s >= 0 and max_ttl_s > 0):
            raise ValueError("max_skew_s must be >= 0 and max_ttl_s > 0")
        self.device = check_id(device, "device")
        self.max_skew_s = max_skew_s
        self.max_ttl_s = max_ttl_s
        self._verifier = verifier
        self._seen: _Expiring[None] = _Expiring(replay_window)
        self._floor = -math.inf

    @property
    def remembered(self) -> int:
        return len(self._seen)

    def remember(self, command_id: str, expires_at: float) -> None:
        """Take an id accepted before (by an earlier run of the device) as seen until `expires_at`."""
        evicted = self._seen.put(command_id, expires_at, None)
        if evicted is not None:
            self._floor = max(self._floor, evicted)

    def verify(
        self, envelope: Envelope, now: float | None = None, *, topic_name: str | None = None
    ) -> VerifiedCommand:
        """The command, once every check has passed and its id is remembered; else `ProtocolError`.

        `topic_name` is the name in the ``…/cmd/{name}`` topic the command came on: the signed name
        must be the same ("name-mismatch"), so that a topic's ACL or a subscriber's filter sees the
        command that runs."""
        now = time.time() if now is None else now
        if envelope.type != "cmd":
            raise ProtocolError("wrong-type", f"expected a cmd envelope, got {envelope.type}")
        if envelope.body.get("sig") in (None, ""):
            raise ProtocolError("unsigned", f"command {envelope.id} carries no signature")
        body = CommandBody.from_envelope(envelope)
        self._verifier.verify(body.key, _signature(body.sig), signing_payload(envelope))
        if body.device != self.device:
            raise ProtocolError("wrong-target", f"command {envelope.id} is for {body.device!r}")
        if topic_name is not None and body.name != topic_name:
            raise ProtocolError(
                "name-mismatch", f"command {envelope.id} is {body.name!r} but came on …/cmd/{topic_name}"
            )
        if body.expires_at - body.issued_at > self.max_ttl_s:
            raise ProtocolError("ttl-too-long", f"command {envelope.id} lives over {self.max_ttl_s:g} s")
        if body.issued_at - self.max_skew_s > now:
            ahead = body.issued_at - now
            raise ProtocolError("not-yet-valid", f"command {envelope.id} is issued {ahead:.3f} s ahead")
        if now >= body.expires_at:
            late = now - body.expires_at
            raise ProtocolError("expired", f"command {envelope.id} expired {late:.3f} s ago")
        self._seen.purge(now)
        if envelope.id in self._seen:
            raise ProtocolError("replayed", f"command {envelope.id} was accepted already")
        if body.expires_at <= self._floor:
            raise ProtocolError(
                "replay-cache-full",
                f"command {envelope.id}: too many commands in flight to tell whether it is a replay",
            )
        evicted = self._seen.put(envelope.id, body.expires_at, None)
        if evicted is not None:
            self._floor = max(self._floor, evicted)
        return VerifiedCommand(
            id=envelope.id,
            src=envelope.src,
            name=body.name,
            args=body.args,
            device=body.device,
            issued_at=body.issued_at,
            expires_at=body.expires_at,
            key=body.key,
        )


def _signature(text: str) -> bytes:
    """The signature ``sig`` spells in canonical base64, or no bytes (which never verify)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""
    return raw if base64.b64encode(raw).decode() == text else b""


class ReplyCache:
    """The first reply sent for each command, kept until the command expires (at most `capacity`), so
    a command re-sent with the same id (after a reconnect, say) gets that reply instead of running twice.

    When `put` is given the `request` that was answered, `get` gives the reply only for an equal request:
    a copy with the same id and anything else changed (tampered, unsigned, re-signed) gets nothing here
    and goes to the verifier instead."""

    def __init__(self, capacity: int = 1024) -> None:
        self._replies: _Expiring[tuple[Envelope | None, Envelope]] = _Expiring(capacity)

    def __len__(self) -> int:
        return len(self._replies)

    def put(
        self,
        command: VerifiedCommand,
        reply: Envelope,
        now: float | None = None,
        *,
        request: Envelope | None = None,
    ) -> None:
        self._replies.purge(time.time() if now is None else now)
        self._replies.put(command.id, command.expires_at, (request, reply))

    def get(
        self, command_id: str, now: float | None = None, *, request: Envelope | None = None
    ) -> Envelope | None:
        self._replies.purge(time.time() if now is None else now)
        entry = self._replies.get(command_id)
        if entry is None:
            return None
        answered, reply = entry
        if answered is not None and request != answered:
            return None
        return reply
