"""Fault test 6: garbage, oversized and wrongly signed messages on every topic of the wire contract, while
two device processes stream durable telemetry to a gateway process through a real broker.

Each bad message is refused with a reason by the program that reads that topic: the gateway keeps a row
(topic, reason) in its store's ``rejected`` table; a device counts ``rejected:<reason>`` (read back with a
signed ``stats`` command) and answers a refused command on its response topic with the reason. Topics no
program reads (``…/log``, aggregates) are ignored by the gateway; payloads over the broker's packet limit
for a client are dropped by the broker, which logs it. Meanwhile every device's stream keeps flowing,
ends up stored exactly once and in order, and no program crashes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sqlite3
import struct
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import pytest
from pydantic import JsonValue

from edgekernel.config import BrokerConfig
from edgekernel.fleet.calls import CallTimeoutError, call
from edgekernel.link import Message, Mosquitto, MqttSession
from edgekernel.protocol import (
    DEFAULT_MAX_PAYLOAD,
    Envelope,
    FleetKey,
    ProtocolError,
    ReplyBody,
    Sample,
    StatusBody,
    TelemetryBody,
    Topic,
    TopicKind,
    decode,
    encode,
    sign_command,
    signing_payload,
    topics,
)
from edgekernel.protocol.envelope import MAX_BODY_DEPTH
from edgekernel.protocol.inbound import ENVELOPE_TYPE, FROM_DEVICE
from tests.waiting import DEADLINE_S, wait_until

from .harness import (
    FLEET,
    check_exactly_once,
    device,
    gateway,
    more_than_now,
    running,
    sent_within,
    wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

NAMES = ["dev-1", "dev-2"]
STREAM = "vibration"
GATEWAY = "gw-1"
REPLY = f"ek-reply/{FLEET}/attacker"
SILENT = "dev-9"  # no such device: whatever answers a command to it is forged
FAR_SEQ = 10**9  # a seq no device reaches in this test: stored by mistake, it breaks exactly-once

# who reads each kind of topic; a new kind must be placed here before this test passes
GATEWAY_READS = frozenset({TopicKind.STATUS, TopicKind.REPORTED, TopicKind.TELEMETRY, TopicKind.EVENTS})
DEVICE_READS = frozenset({TopicKind.DESIRED, TopicKind.ACK, TopicKind.CMD})
NOBODY_READS = frozenset({TopicKind.LOG, TopicKind.AGG})  # users subscribe; the gateway ignores them
# an empty payload clears a retained topic: not a refusal (a device counts desired_cleared)
CLEARS = frozenset({TopicKind.STATUS, TopicKind.REPORTED, TopicKind.DESIRED})
NAME_OF = {TopicKind.TELEMETRY: STREAM, TopicKind.CMD: "ping", TopicKind.EVENTS: "alarm"}

HUGE = 5_000_000  # over the 1 MiB packet limit the gateway and the devices announce: the broker drops it
BIG = 700_000  # over the payload limit, under the packet limit: the reader refuses it


def topic_of(kind: TopicKind, dev: str) -> str:
    """The topic of `kind` about `dev`, built by the protocol package whatever the kind's shape."""
    if kind is TopicKind.AGG:
        return str(Topic(FLEET, dev, kind, STREAM, gateway="gw-evil"))
    try:
        return str(Topic(FLEET, dev, kind))
    except ProtocolError:  # a named kind
        return str(Topic(FLEET, dev, kind, NAME_OF.get(kind, "garbage")))


def fields(kind: TopicKind, dev: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "src": dev,
        "ts": time.time(),
        "type": ENVELOPE_TYPE[kind],
        "body": {},
    }
    return base | changes


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


def text(kind: TopicKind, dev: str, **tokens: str) -> bytes:
    """An envelope written by hand, so that a member can hold what `json.dumps` would not write."""
    members = {
        "v": "1",
        "id": json.dumps(uuid.uuid4().hex),
        "src": json.dumps(dev),
        "ts": "1700000000.5",
        "type": json.dumps(ENVELOPE_TYPE[kind]),
        "body": "{}",
    } | tokens
    return ("{" + ", ".join(f'"{name}": {value}' for name, value in members.items()) + "}").encode()


def cbor_envelope(kind: TopicKind, dev: str, body: bytes) -> bytes:
    """A CBOR envelope whose body is the raw CBOR `body`."""
    head = cbor2.dumps({k: v for k, v in fields(kind, dev).items() if k != "body"})
    assert 0xA0 <= head[0] < 0xB7  # a map of fewer than 23 members: one more fits in the first byte
    return bytes([head[0] + 1]) + head[1:] + cbor2.dumps("body") + body


def _shared_bomb(levels: int) -> bytes:
    def level(k: int, index: int) -> bytes:
        if k == 0:
            return b"\xd8\x1c\x81\x01"  # shareable [1]
        return b"\xd8\x1c\x82" + level(k - 1, index + 1) + b"\xd8\x1d" + cbor2.dumps(index + 1)

    return level(levels, 0)


def _colliding_keys(count: int) -> bytes:
    """A map whose keys are distinct fractions that all hash alike: quadratic to build."""
    modulus = 2**61 - 1  # Python hashes rationals modulo this prime
    entries = []
    for denominator in range(2, count + 2):
        numerator = 12345 * denominator + modulus  # numerator / denominator ≡ 12345 (mod modulus)
        entries.append(b"\xd8\x1e\x82" + _cbor_int(numerator) + _cbor_int(denominator) + b"\x00")
    return b"\xb9" + struct.pack(">H", count) + b"".join(entries)


def _cbor_int(value: int) -> bytes:
    if value < 2**64:
        return cbor2.dumps(value)
    return b"\xc2" + cbor2.dumps(value.to_bytes((value.bit_length() + 7) // 8, "big"))  # bignum


def _string_reference_bomb(length: int, count: int) -> bytes:
    """One string sent once and named again `count` times (tags 256 and 25)."""
    items = b"\x79" + struct.pack(">H", length) + b"A" * length + b"\xd8\x19\x00" * count
    return b"\xd9\x01\x00\x99" + struct.pack(">H", count + 1) + items


RANDOM = random.Random(6).randbytes(512)
SHARED_BOMB = b"\xa1\x61a" + _shared_bomb(48)  # 2**48 leaves once expanded
CYCLE = b"\xd8\x1c\xa1\x61a\xd8\x1d\x00"  # a body that holds itself
STRING_BOMB = b"\xa1\x61a" + _string_reference_bomb(10_000, 5_000)  # 50 M characters from 25 kB
COLLIDING = b"\xa1\x61a" + _colliding_keys(12_000)


def generic(kind: TopicKind, dev: str, other: str) -> list[tuple[str, bytes, str | None]]:
    """(case, payload, reason) for any topic: what every reader refuses before looking at the body."""
    wrong_type = "log" if ENVELOPE_TYPE[kind] != "log" else "status"
    deep = "[" * 100_000 + "]" * 100_000
    over = "[" * (MAX_BODY_DEPTH + 5) + "]" * (MAX_BODY_DEPTH + 5)
    cases: list[tuple[str, bytes, str | None]] = [
        ("random bytes", RANDOM, "bad-cbor"),
        ("empty", b"", None if kind in CLEARS else "empty"),
        ("truncated json", as_json(fields(kind, dev))[:40], "bad-envelope"),
        ("json of the wrong shape", b'{"hello": "world"}', "bad-envelope"),
        ("json array", b"[1, 2, 3]", "bad-cbor"),  # not an object: read as CBOR
        ("schema version 2", as_json(fields(kind, dev, v=2)), "bad-envelope"),
        ("schema version true", as_json(fields(kind, dev, v=True)), "bad-envelope"),
        ("wrong type for the topic", as_json(fields(kind, dev, type=wrong_type)), "wrong-type"),
        ("unknown type", as_json(fields(kind, dev, type="bogus")), "bad-envelope"),
        ("negative seq", as_json(fields(kind, dev, seq=-1)), "bad-envelope"),
        ("seq as a string", as_json(fields(kind, dev, seq="7")), "bad-envelope"),
        ("seq past 2**63", as_json(fields(kind, dev, seq=2**63)), "bad-envelope"),
        ("NaN time", text(kind, dev, ts="NaN"), "bad-envelope"),
        ("infinite time", text(kind, dev, ts="1e400"), "bad-envelope"),
        ("5000-digit seq", text(kind, dev, seq="9" * 5000), "bad-envelope"),
        ("json nested 100000 deep", text(kind, dev, body='{"a": ' + deep + "}"), "bad-envelope"),
        ("json nested over the body limit", text(kind, dev, body='{"a": ' + over + "}"), "bad-envelope"),
        ("invalid utf-8", text(kind, dev, id='"@@"').replace(b"@@", b"\xff\xfe"), "bad-envelope"),
        ("extra member", as_json(fields(kind, dev, admin=True)), "bad-envelope"),
        ("cbor break byte", b"\xff", "bad-cbor"),
        ("truncated cbor", cbor2.dumps(fields(kind, dev))[:-3], "bad-cbor"),
        ("cbor with trailing bytes", cbor2.dumps(fields(kind, dev)) + b"\x00", "bad-cbor"),
        ("cbor array", cbor2.dumps([1, 2, 3]), "bad-envelope"),
        ("cbor NaN", cbor_envelope(kind, dev, b"\xa1\x61a\xf9\x7e\x00"), "bad-envelope"),
        ("cbor length bomb", cbor_envelope(kind, dev, b"\x5b\x7f" + b"\xff" * 7), "bad-cbor"),
        ("cbor nested 100000 deep", cbor_envelope(kind, dev, b"\x81" * 100_000 + b"\x00"), "bad-cbor"),
        ("cbor shared-reference bomb", cbor_envelope(kind, dev, SHARED_BOMB), "bad-cbor"),
        ("cbor cycle", cbor_envelope(kind, dev, CYCLE), "bad-cbor"),
        ("cbor string-reference bomb", cbor_envelope(kind, dev, STRING_BOMB), "bad-cbor"),
        ("cbor hash-collision keys", cbor_envelope(kind, dev, COLLIDING), "bad-cbor"),
        ("just over the payload limit", b"{" + b" " * (DEFAULT_MAX_PAYLOAD - 1) + b"}", "oversized"),
    ]
    if kind in FROM_DEVICE:
        cases.append(("another device as sender", as_json(fields(kind, other)), "src-mismatch"))
    return cases + bodies(kind, dev)


def bodies(kind: TopicKind, dev: str) -> list[tuple[str, bytes, str | None]]:
    """Well-formed envelopes whose body does not fit the topic."""
    batch = TelemetryBody(stream=STREAM, samples=[Sample(ts=1.7e9, value=1.0)])
    other_stream = TelemetryBody(stream="other", samples=[Sample(ts=1.7e9, value=1.0)])
    table: dict[TopicKind, list[tuple[str, bytes, str | None]]] = {
        TopicKind.STATUS: [
            ("status of the wrong shape", as_json(fields(kind, dev, body={"online": "yes"})), "bad-body"),
            (
                "status with a seq",
                as_json(fields(kind, dev, seq=1, body={"online": True, "boot": 1})),
                "unexpected-seq",
            ),
            (
                "status from 1970",
                as_json(fields(kind, dev, ts=0.0, body={"online": True, "boot": 1})),
                "bad-ts",
            ),
        ],
        TopicKind.REPORTED: [
            ("reported of the wrong shape", as_json(fields(kind, dev, body={"cores": 0})), "bad-body")
        ],
        TopicKind.TELEMETRY: [
            (
                "no samples",
                as_json(fields(kind, dev, seq=FAR_SEQ, body={"stream": STREAM, "samples": []})),
                "bad-body",
            ),
            ("another stream's batch", encode(other_stream.to_envelope(dev, seq=FAR_SEQ)), "stream-mismatch"),
            ("forged seq 2**63-1", encode(batch.to_envelope(dev, seq=2**63 - 1)), "seq-jump"),
            (
                "forged seq 2**63-1 in an epoch",
                encode(batch.to_envelope(dev, seq=2**63 - 1, epoch=5)),
                "seq-jump",
            ),
            ("envelope ts 1e15", encode(batch.to_envelope(dev, seq=FAR_SEQ, ts=1e15)), "bad-ts"),
            ("envelope ts 0", encode(batch.to_envelope(dev, seq=FAR_SEQ, ts=0.0)), "bad-ts"),
            (
                "sample ts 1e300",
                encode(
                    TelemetryBody(stream=STREAM, samples=[Sample(ts=1e300, value=1.0)]).to_envelope(
                        dev, seq=3
                    )
                ),
                "bad-ts",
            ),
            (
                "an epoch without a seq",
                as_json(fields(kind, dev, epoch=5, body=batch.to_body())),
                "bad-envelope",
            ),
        ],
        TopicKind.DESIRED: [
            ("no generation", as_json(fields(kind, dev, body={"agents": []})), "bad-body"),
            ("negative generation", as_json(fields(kind, dev, body={"generation": -1})), "bad-body"),
            ("generation as a string", as_json(fields(kind, dev, body={"generation": "7"})), "bad-body"),
            ("generation past 2**63", as_json(fields(kind, dev, body={"generation": 2**64})), "bad-body"),
            (
                "20 kB bignum generation",
                cbor_envelope(kind, dev, b"\xa1\x6ageneration" + _cbor_int(2 ** (8 * 20_000) - 1)),
                "bad-body",
            ),
        ],
        TopicKind.ACK: [
            ("reversed ack range", as_json(fields(kind, dev, body={"ranges": [[9, 1]]})), "bad-body"),
            ("no ack ranges", as_json(fields(kind, dev, body={"ranges": []})), "bad-body"),
            ("ack past 2**63", as_json(fields(kind, dev, body={"ranges": [[1, 2**63]]})), "bad-body"),
        ],
    }
    return table.get(kind, [])


def malformed_topics() -> list[tuple[str, str, str]]:
    """(case, topic, reason) under the fleet's prefix: refused by the gateway before the payload."""
    root = f"ek/v1/{FLEET}"
    return [
        ("unknown kind", f"{root}/dev-1/bogus", "unknown-kind"),
        ("kind in capitals", f"{root}/dev-1/TELEMETRY/{STREAM}", "unknown-kind"),
        ("telemetry without a stream", f"{root}/dev-1/telemetry", "bad-depth"),
        ("one level too many", f"{root}/dev-1/telemetry/{STREAM}/extra", "bad-depth"),
        ("status with a name", f"{root}/dev-1/status/extra", "bad-depth"),
        ("device id in capitals", f"{root}/Dev-1/telemetry/{STREAM}", "bad-id"),
        ("empty stream", f"{root}/dev-1/telemetry/", "bad-id"),
        ("empty device", f"{root}//status", "bad-id"),
        ("non-ascii device", f"{root}/dév-1/status", "bad-id"),
        ("no kind", f"{root}/dev-1", "bad-topic"),
        ("aggregate outside _gateway", f"{root}/dev-1/agg", "bad-topic"),
        ("short gateway topic", f"{root}/_gateway/{GATEWAY}/agg/dev-1", "bad-topic"),
        ("2000-byte topic", f"{root}/dev-1/telemetry/" + "a" * 2000, "bad-topic"),
    ]


@dataclass
class Expected:
    gateway: Counter[tuple[str, str]] = field(default_factory=Counter)
    kernel: dict[str, Counter[str]] = field(default_factory=lambda: {n: Counter() for n in NAMES})
    commands: dict[str, Counter[str]] = field(default_factory=lambda: {n: Counter() for n in NAMES})
    replies: dict[str, str] = field(default_factory=dict)  # correlation → reason of the failure reply
    dropped: Counter[str] = field(default_factory=Counter)  # broker client id → packets too large
    cases: set[str] = field(default_factory=set)


@dataclass
class Attacker:
    session: MqttSession
    key: FleetKey
    rogue: FleetKey
    expected: Expected = field(default_factory=Expected)
    replies: dict[bytes, Message] = field(default_factory=dict)
    logs: list[Message] = field(default_factory=list)
    forged: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def listen(self) -> None:
        async for message in self.session.messages():
            if message.topic == REPLY and message.correlation_data is not None:
                self.replies[message.correlation_data] = message
            elif message.topic.endswith("/log"):
                self.logs.append(message)
            elif message.topic.startswith(f"ek/v1/{FLEET}/{SILENT}/cmd/") and message.response_topic:
                task = asyncio.create_task(self.forge(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def send(
        self, case: str, topic: str, payload: bytes, reader: str | None, reason: str | None
    ) -> None:
        """Publish one bad message; `reader` is the gateway, a device or nobody."""
        self.expected.cases.add(case)
        await self.session.publish(topic, payload, qos=1)
        if reason is None or reader is None:
            return
        if reader == GATEWAY:
            self.expected.gateway[(topic, reason)] += 1
        else:
            self.expected.kernel[reader][f"rejected:{reason}"] += 1

    async def command(
        self,
        case: str,
        dev: str,
        envelope: Envelope,
        reason: str | None,
        *,
        response_topic: str | None = REPLY,
        name: str = "ping",
    ) -> None:
        """Publish a command; a refused one is answered on `response_topic` with `reason`."""
        self.expected.cases.add(case)
        await self.session.publish(
            topics.cmd(FLEET, dev, name),
            encode(envelope),
            qos=1,
            response_topic=response_topic,
            correlation_data=case.encode(),
        )
        if reason is not None:
            self.expected.commands[dev][f"refused:{reason}"] += 1
            if response_topic == REPLY:
                self.expected.replies[case] = reason

    async def reply(self, case: str, timeout: float = DEADLINE_S) -> Envelope:
        deadline = time.monotonic() + timeout
        while case.encode() not in self.replies:
            assert time.monotonic() < deadline, f"no reply to {case!r}"
            await asyncio.sleep(0.02)
        return decode(self.replies[case.encode()].payload)

    async def forge(self, request: Message) -> None:
        """Answer a command meant for a device that does not exist, with replies that must not count."""
        command = decode(request.payload)
        assert request.response_topic is not None
        other = ReplyBody.success("not-" + command.id, {"pong": True})
        forgeries = [
            RANDOM,
            b"",
            encode(StatusBody(online=True, boot=1).to_envelope(SILENT)),  # not a reply
            encode(other.to_envelope(SILENT)),  # the answer to another command
            encode(ReplyBody.success(command.id, {"pong": True}).to_envelope("dev-1")),  # another sender
        ]
        for payload in forgeries:
            await self.session.publish(
                request.response_topic, payload, qos=1, correlation_data=request.correlation_data
            )
            self.forged += 1


def signed(key: FleetKey, dev: str, name: str = "ping", **options: float) -> Envelope:
    return sign_command(key, src="attacker", device=dev, name=name, args={}, ttl_s=60, **options)


def with_body(envelope: Envelope, **changes: JsonValue) -> Envelope:
    return envelope.model_copy(update={"body": {**envelope.body, **changes}})


def without_sig(envelope: Envelope) -> Envelope:
    return envelope.model_copy(update={"body": {k: v for k, v in envelope.body.items() if k != "sig"}})


def resigned(key: FleetKey, envelope: Envelope, dev: str) -> Envelope:
    """A fresh command signed by the fleet key, but with the id of `envelope`."""
    fresh = without_sig(signed(key, dev)).model_copy(update={"id": envelope.id})
    return with_body(fresh, sig=base64.b64encode(key.sign(signing_payload(fresh))).decode())


async def attack(url: str, key: FleetKey) -> Attacker:
    broker = BrokerConfig(url=url)
    session = MqttSession(
        broker,
        client_id="attacker",
        persistent=False,
        subscriptions=[
            (REPLY, 1),
            (topics.subscription(FLEET, TopicKind.LOG), 1),
            (topics.subscription(FLEET, TopicKind.CMD, device=SILENT), 1),
        ],
    )
    async with session:
        await session.wait_subscribed(DEADLINE_S)
        attacker = Attacker(session, key, FleetKey.generate())
        listener = asyncio.create_task(attacker.listen())
        await garbage_on_every_topic(attacker)
        await bad_commands(attacker)
        await forged_replies(attacker, broker)
        listener.cancel()
    return attacker


async def garbage_on_every_topic(attacker: Attacker) -> None:
    assert set(TopicKind) == GATEWAY_READS | DEVICE_READS | NOBODY_READS, "place the new topic kind"
    for index, dev in enumerate(NAMES):
        other = NAMES[1 - index]
        for kind in TopicKind:
            topic = topic_of(kind, dev)
            reader = GATEWAY if kind in GATEWAY_READS else dev if kind in DEVICE_READS else None
            for case, payload, reason in generic(kind, dev, other):
                await attacker.send(f"{kind}: {case}", topic, payload, reader, reason)
            if kind is TopicKind.DESIRED:
                attacker.expected.kernel[dev]["desired_cleared"] += 1
    # bigger ones on dev-1 only: refused by the reader, or dropped by the broker for being too large
    for kind in TopicKind:
        topic = topic_of(kind, "dev-1")
        reader = GATEWAY if kind in GATEWAY_READS else "dev-1" if kind in DEVICE_READS else None
        await attacker.send(f"{kind}: 700 kB", topic, b"{" + b" " * (BIG - 2) + b"}", reader, "oversized")
    for kind in (TopicKind.TELEMETRY, TopicKind.DESIRED, TopicKind.CMD):
        await attacker.send(f"{kind}: 5 MB", topic_of(kind, "dev-1"), b"\x00" * HUGE, None, None)
        attacker.expected.dropped[f"ek-{FLEET}-gw-{GATEWAY}"] += 1
        if kind in DEVICE_READS:
            attacker.expected.dropped[f"ek-{FLEET}-dev-1"] += 1
    # topics that are not topics of the contract; the payload is fine, and would break exactly-once
    payload = encode(
        TelemetryBody(stream=STREAM, samples=[Sample(ts=1.7e9, value=1.0)]).to_envelope("dev-1", seq=FAR_SEQ)
    )
    for case, topic, reason in malformed_topics():
        await attacker.send(f"topic: {case}", topic, payload, GATEWAY, reason)
    for case, name in [("command name in capitals", "Ping"), ("empty command name", "")]:
        topic = f"ek/v1/{FLEET}/dev-1/cmd/{name}"
        await attacker.send(f"topic: {case}", topic, payload, GATEWAY, "bad-id")
        attacker.expected.kernel["dev-1"]["rejected:bad-id"] += 1


async def bad_commands(attacker: Attacker) -> None:
    key, rogue = attacker.key, attacker.rogue
    now = time.time()
    ping = signed(key, "dev-1")
    # a good command first: it runs once; sent again, its first reply comes back instead of a second run
    await attacker.command("ping", "dev-1", ping, None)
    first = await attacker.reply("ping")
    await attacker.command("replayed ping", "dev-1", ping, None)
    again = await attacker.reply("replayed ping")
    assert again == first, "a replay must get the first reply, not run again"
    attacker.expected.commands["dev-1"]["ok"] += 1
    attacker.expected.commands["dev-1"]["duplicate"] += 1
    cases: list[tuple[str, str, Envelope, str]] = [
        ("unsigned", "dev-1", without_sig(signed(key, "dev-1")), "unsigned"),
        ("empty signature", "dev-1", with_body(signed(key, "dev-1"), sig=""), "unsigned"),
        ("signed by an unknown key", "dev-1", signed(rogue, "dev-1"), "unknown-key"),
        (
            "args changed after signing",
            "dev-1",
            with_body(signed(key, "dev-1"), args={"x": 1}),
            "bad-signature",
        ),
        (
            "name changed after signing",
            "dev-1",
            with_body(signed(key, "dev-1"), name="stats"),
            "bad-signature",
        ),
        (
            "expiry moved after signing",
            "dev-1",
            with_body(signed(key, "dev-1"), expires_at=now + 50),
            "bad-signature",
        ),
        ("signature of garbage", "dev-1", with_body(signed(key, "dev-1"), sig="AAAA"), "bad-signature"),
        (
            "signature of another command",
            "dev-1",
            with_body(signed(key, "dev-1"), sig=ping.body["sig"]),
            "bad-signature",
        ),
        ("malformed key id", "dev-1", with_body(signed(key, "dev-1"), key="xyz"), "bad-body"),
        ("args not an object", "dev-1", with_body(signed(key, "dev-1"), args="x"), "bad-body"),
        (
            "integer past 2**53 in args",
            "dev-1",
            with_body(signed(key, "dev-1"), args={"n": 2**60}),
            "bad-body",
        ),
        ("expired", "dev-1", signed(key, "dev-1", now=now - 120), "expired"),
        ("issued an hour ahead", "dev-1", signed(key, "dev-1", now=now + 3600), "not-yet-valid"),
        (
            "lives two hours",
            "dev-1",
            sign_command(key, src="attacker", device="dev-1", name="ping", ttl_s=7200),
            "ttl-too-long",
        ),
        ("for another device", "dev-1", signed(key, "dev-2"), "wrong-target"),
        ("tampered replay", "dev-1", with_body(ping, args={"x": 1}), "bad-signature"),
        ("unsigned replay", "dev-1", without_sig(ping), "unsigned"),
        ("re-signed with a used id", "dev-1", resigned(key, ping, "dev-1"), "replayed"),
        ("dev-2: unsigned", "dev-2", without_sig(signed(key, "dev-2")), "unsigned"),
        ("dev-2: signed by an unknown key", "dev-2", signed(rogue, "dev-2"), "unknown-key"),
        ("dev-2: for another device", "dev-2", signed(key, "dev-1"), "wrong-target"),
        ("dev-2: expired", "dev-2", signed(key, "dev-2", now=now - 120), "expired"),
    ]
    for case, dev, envelope, reason in cases:
        await attacker.command(case, dev, envelope, reason)
    unknown = signed(key, "dev-1", name="reboot")
    await attacker.command("unknown command", "dev-1", unknown, None, name="reboot")
    attacker.expected.replies["unknown command"] = "unknown-command"
    attacker.expected.commands["dev-1"]["unknown"] += 1
    # refused without a reply to send, or with one the device cannot send
    await attacker.command(
        "no response topic", "dev-1", without_sig(signed(key, "dev-1")), "unsigned", response_topic=None
    )
    attacker.expected.commands["dev-1"]["no-response-topic"] += 1
    wildcard = f"ek-reply/{FLEET}/#"
    await attacker.command(
        "wildcard response topic",
        "dev-1",
        without_sig(signed(key, "dev-1")),
        "unsigned",
        response_topic=wildcard,
    )
    attacker.expected.commands["dev-1"]["bad-response-topic"] += 1
    # a reply sent where a device or the gateway reads: refused there in turn, and no loop
    own = topics.cmd(FLEET, "dev-1", "ping")
    await attacker.command(
        "reply onto its own cmd topic",
        "dev-1",
        without_sig(signed(key, "dev-1")),
        "unsigned",
        response_topic=own,
    )
    attacker.expected.kernel["dev-1"]["rejected:wrong-type"] += 1
    stream = topics.telemetry(FLEET, "dev-1", STREAM)
    await attacker.command(
        "reply onto its telemetry",
        "dev-1",
        without_sig(signed(key, "dev-1")),
        "unsigned",
        response_topic=stream,
    )
    attacker.expected.gateway[(stream, "wrong-type")] += 1
    for case in attacker.expected.replies:
        await attacker.reply(case)


async def forged_replies(attacker: Attacker, broker: BrokerConfig) -> None:
    """A caller waiting on its response topic takes none of the garbage sent there for its reply."""
    attacker.expected.cases.add("forged replies")
    with pytest.raises(CallTimeoutError):
        await call(broker, FLEET, SILENT, "ping", {}, key=attacker.key, timeout=2.0)
    assert attacker.forged == 5


def rejected(tmp: Path) -> list[tuple[str, str]]:
    """The gateway's (topic, reason) rows."""
    with sqlite3.connect(tmp / "store.db", timeout=30) as db:
        return [(str(t), str(r)) for t, r in db.execute("SELECT topic, reason FROM rejected")]


def wait_rejected(tmp: Path, count: int) -> list[tuple[str, str]]:
    """The gateway's (topic, reason) rows, once there are `count` of them (and a moment for extras)."""
    wait_until(
        lambda: len(rejected(tmp)) >= count, f"{count} rejected rows", seen=lambda: Counter(rejected(tmp))
    )
    time.sleep(0.5)
    return rejected(tmp)


def refusals(counters: JsonValue) -> Counter[str]:
    assert isinstance(counters, dict)
    return Counter(
        {
            name: int(value)  # type: ignore[arg-type]
            for name, value in counters.items()
            if name.startswith("rejected:") or name == "desired_cleared"
        }
    )


async def read_stats(url: str, key: FleetKey, name: str, want: Counter[str]) -> dict[str, JsonValue]:
    """The device's counters from a signed `stats` command, once its refusals are all counted."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = await call(BrokerConfig(url=url), FLEET, name, "stats", {}, key=key, timeout=30)
        assert result.reply.ok, result.reply
        stats = result.reply.result
        assert isinstance(stats, dict)
        if refusals(stats["counters"]) == want or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.3)


def test_garbage_on_every_topic_is_refused_with_a_reason_and_the_stream_keeps_flowing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    key = FleetKey.generate()
    public = tmp_path / "fleet.pub"
    public.write_bytes(key.public_pem())
    gw = gateway(tmp_path, broker.url)
    devices = [device(tmp_path, name, broker.url, fleet_keys=[public]) for name in NAMES]
    programs = [gw, *devices]
    with running(gw, devices):
        wait_stored(tmp_path, dict.fromkeys(NAMES, 20))
        started, started_wall = time.monotonic(), time.time()
        attacker = asyncio.run(attack(broker.url, key))
        attack_s, ended_wall = time.monotonic() - started, time.time()
        expected = attacker.expected
        rows = wait_rejected(tmp_path, sum(expected.gateway.values()))
        stats = {
            name: asyncio.run(read_stats(broker.url, key, name, expected.kernel[name])) for name in NAMES
        }
        # the stream keeps flowing during the attack (samples taken then are stored) and after it
        wait_stored(tmp_path, more_than_now(tmp_path, NAMES, 20), what="20 more per device after the attack")
        during = sent_within(tmp_path, NAMES, started_wall, ended_wall)
        assert all(during.values()), f"stored from the {attack_s:.1f}s of the attack: {during}"
        assert [p.proc.poll() if p.proc else "never started" for p in programs] == [None] * len(programs)
    assert [p.proc.returncode if p.proc else None for p in programs] == [0] * len(programs)
    for program in programs:
        assert "Traceback" not in program.log.read_text(errors="replace"), program.name
    print(f"{len(expected.cases)} cases sent in {attack_s:.1f}s")

    # (1) every committed message stored exactly once, in order; nothing sent by the attacker stored
    for name in NAMES:
        assert check_exactly_once(tmp_path, name) > 50

    # (3) the gateway refused each message it reads with the expected reason, and nothing else
    assert Counter(rows) == expected.gateway

    # each device counted its refusals by reason, and its command gate refused each bad command
    for name in NAMES:
        counters, commands = stats[name]["counters"], stats[name]["commands"]
        assert isinstance(counters, dict)
        assert isinstance(commands, dict)
        assert refusals(counters) == expected.kernel[name], name
        assert "background_failed" not in counters
        got = Counter({k: int(v) for k, v in commands.items() if k != "ok"})  # type: ignore[arg-type]
        assert got == Counter({k: v for k, v in expected.commands[name].items() if k != "ok"}), name
        assert int(commands.get("ok", 0)) >= expected.commands[name]["ok"]  # type: ignore[arg-type]

    # each refused command was answered on the response topic, with the reason
    answered = {}
    for case in expected.replies:
        reply = ReplyBody.from_envelope(decode(attacker.replies[case.encode()].payload))
        answered[case] = reply.error.reason if reply.error else "ok"
    assert answered == expected.replies
    unanswered = {"no response topic", "wildcard response topic", "reply onto its own cmd topic"}
    assert not {case.encode() for case in unanswered} & set(attacker.replies)

    # payloads over a client's packet limit: the broker drops them, and says so in its log
    log = broker.log_path.read_text()
    for client, count in expected.dropped.items():
        assert log.count(f"Dropping too large outgoing PUBLISH for {client} ") == count, client

    # devices say why on their log topic too
    for name in NAMES:
        lines = [m for m in attacker.logs if m.topic == topics.log(FLEET, name)]
        messages = []
        for line in lines:
            try:
                messages.append(str(decode(line.payload).body.get("message")))
            except ProtocolError:
                continue  # the attacker's own garbage on the log topic
        assert any("[oversized]" in m for m in messages), name
