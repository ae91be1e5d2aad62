"""The MQTT session's values: messages received and to send, its counters, what the broker allows as
its CONNACK says, and the size of a PUBLISH packet on the wire.

MQTT 5 (sections 3.2.2.3 and 3.3): a broker may announce a Maximum Packet Size (a client must not
send a larger packet: the broker disconnects it), a Receive Maximum (how many QoS 1 and 2 publishes
it takes unacknowledged at once; 65,535 when absent) and whether it offers shared subscriptions
(yes when absent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

__all__ = [
    "DEFAULT_RECEIVE_MAXIMUM",
    "BrokerLimits",
    "Message",
    "MessageFactory",
    "Outgoing",
    "QueuedPublish",
    "SessionStats",
    "mqtt_properties",
    "publish_packet_size",
    "varint_size",
]

DEFAULT_RECEIVE_MAXIMUM = 65_535


@dataclass(frozen=True, slots=True)
class Message:
    """A message received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    received_at: float = 0.0

    @classmethod
    def from_paho(cls, msg: paho.MQTTMessage) -> Message:
        props = getattr(msg, "properties", None)
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        return cls(
            topic=topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            content_type=getattr(props, "ContentType", None),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
            user_properties=tuple(getattr(props, "UserProperty", ()) or ()),
            received_at=time.time(),
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish, as a value: used for the birth message and the Last Will."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = None


@dataclass(slots=True)
class SessionStats:
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    received: int = 0
    published: int = 0
    dropped_qos0_offline: int = 0
    last_error: str | None = None
    connected_since: float | None = None
    subscribe_failures: int = 0
    callback_errors: int = 0
    too_large: int = 0
    in_flight: int = 0  # QoS 1/2 publishes handed to paho and not yet acknowledged
    peak_in_flight: int = 0


MessageFactory = Callable[[], Outgoing]


@dataclass(slots=True)
class QueuedPublish:
    """A message on its way: waiting for its turn in the session, then for the broker's answer."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    future: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """`maximum_packet_size` None: the protocol's own bound only."""

    maximum_packet_size: int | None = None
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    shared_subscriptions: bool = True

    @classmethod
    def from_connack(cls, properties: Properties | None) -> BrokerLimits:
        def value(name: str) -> int | None:
            found = getattr(properties, name, None) if properties is not None else None
            return found if isinstance(found, int) else None

        maximum = value("MaximumPacketSize")
        receive = value("ReceiveMaximum")
        shared = value("SharedSubscriptionAvailable")
        return cls(
            maximum_packet_size=maximum if maximum is not None and maximum > 0 else None,
            receive_maximum=receive if receive is not None and receive > 0 else DEFAULT_RECEIVE_MAXIMUM,
            shared_subscriptions=shared != 0,
        )


def varint_size(value: int) -> int:
    """Bytes of `value` as an MQTT variable byte integer: 1 to 4 (5 for what no packet can hold, so
    that such a packet is larger than any limit)."""
    size = 1
    while value >= 128:
        value >>= 7
        size += 1
    return size


def publish_packet_size(topic: str, payload: bytes, props: Properties | None, *, qos: int = 1) -> int:
    """The whole MQTT 5 PUBLISH packet: fixed header, topic, packet id (QoS 1 and 2), properties
    with their length, payload. This is what the broker's Maximum Packet Size bounds."""
    properties = props.pack() if props is not None else b"\x00"  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + len(properties) + len(payload)
    return 1 + varint_size(remaining) + remaining


def mqtt_properties(packet_type: int, **values: object) -> Properties | None:
    """MQTT 5 properties with the values that are set, or None when none is."""
    present = {name: value for name, value in values.items() if value is not None}
    if not present:
        return None
    properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in present.items():
        setattr(properties, name, value)
    return properties
