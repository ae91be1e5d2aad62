"""One check for everything that arrives: parse the topic, decode the payload, match the two.

Every program refuses a message the same way, with a `ProtocolError` whose reason names what is
wrong: the topic (bad-topic, bad-id, unknown-kind, …), the payload (oversized, bad-envelope, …), an
envelope whose sender is not the device the topic belongs to (src-mismatch), whose type does not
belong on that kind of topic (wrong-type), or that carries a seq but is not telemetry or an event
(unexpected-seq).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekernel.protocol.codec import DEFAULT_MAX_PAYLOAD, decode
from edgekernel.protocol.envelope import Envelope, MessageType
from edgekernel.protocol.errors import ProtocolError
from edgekernel.protocol.topics import Topic, TopicKind, parse

ENVELOPE_TYPE: dict[TopicKind, MessageType] = {
    TopicKind.STATUS: "status",
    TopicKind.REPORTED: "reported",
    TopicKind.DESIRED: "desired",
    TopicKind.TELEMETRY: "telemetry",
    TopicKind.EVENTS: "event",
    TopicKind.ACK: "ack",
    TopicKind.CMD: "cmd",
    TopicKind.LOG: "log",
    TopicKind.AGG: "agg",
}

DURABLE_TYPES = frozenset({"telemetry", "event"})

# topics a device publishes about itself: the envelope's src must be that device
FROM_DEVICE = frozenset(
    {TopicKind.STATUS, TopicKind.REPORTED, TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.LOG}
)


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: Topic
    envelope: Envelope


def inbound(topic: str | Topic, payload: bytes, *, max_size: int = DEFAULT_MAX_PAYLOAD) -> Inbound:
    """Parse, decode and cross-check one received message, or raise `ProtocolError` saying why not."""
    parsed = topic if isinstance(topic, Topic) else parse(topic)
    envelope = decode(payload, max_size=max_size)
    if parsed.kind in FROM_DEVICE and envelope.src != parsed.device:
        raise ProtocolError(
            "src-mismatch", f"envelope from {envelope.src!r} on {parsed.device!r}'s topic", topic=str(parsed)
        )
    expected = ENVELOPE_TYPE[parsed.kind]
    if envelope.type != expected:
        raise ProtocolError(
            "wrong-type",
            f"a {envelope.type} envelope on a {parsed.kind.value} topic (expected {expected})",
            topic=str(parsed),
        )
    check_seq(envelope, topic=str(parsed))
    return Inbound(parsed, envelope)


def check_seq(envelope: Envelope, *, topic: str | None = None) -> None:
    """Only durable messages take a seq, telemetry and events: a receiver acknowledges a seq once it
    has stored the message, and stores only those, so a seq elsewhere could be neither acknowledged
    truthfully nor told apart from a lost message."""
    if envelope.seq is not None and envelope.type not in DURABLE_TYPES:
        raise ProtocolError(
            "unexpected-seq",
            f"a {envelope.type} envelope carries a seq (only telemetry and events do)",
            topic=topic,
        )
