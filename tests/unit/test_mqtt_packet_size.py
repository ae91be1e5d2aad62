"""The size of a PUBLISH packet, computed, equals what paho writes to the socket; CONNACK limits."""

from __future__ import annotations

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekernel.link import BrokerLimits
from edgekernel.link.mqtt_values import mqtt_properties, publish_packet_size, varint_size

# topics and payloads around the variable byte integer's steps (127/128, 16,383/16,384)
topics = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"), max_size=300)
payloads = st.one_of(st.binary(max_size=300), st.integers(16_000, 17_000).map(lambda n: b"x" * n))
optional_text = st.none() | st.text(st.characters(codec="utf-8"), max_size=200)


def encoded_by_paho(topic: str, payload: bytes, props: Properties | None, qos: int) -> bytes:
    """The PUBLISH packet paho builds, taken as it would be queued for the socket."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="size", protocol=MQTTProtocolVersion.MQTTv5)
    packets: list[bytes] = []

    def queue(command: int, packet: bytes, mid: int, qos: int, info: object = None) -> MQTTErrorCode:
        packets.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._sock = object()  # type: ignore[assignment]  # as if connected: paho builds and queues
    client._packet_queue = queue  # type: ignore[method-assign,assignment]
    client._send_publish(1, topic.encode(), payload, qos, False, False, None, props)
    client._sock = None
    assert len(packets) == 1
    return packets[0]


@settings(max_examples=300, deadline=None)
@given(
    topic=topics,
    payload=payloads,
    qos=st.sampled_from([0, 1, 2]),
    content_type=optional_text,
    response_topic=optional_text,
    correlation=st.none() | st.binary(max_size=64),
)
def test_the_computed_size_is_the_size_paho_encodes(
    topic: str,
    payload: bytes,
    qos: int,
    content_type: str | None,
    response_topic: str | None,
    correlation: bytes | None,
) -> None:
    props = mqtt_properties(
        PacketTypes.PUBLISH,
        ContentType=content_type,
        ResponseTopic=response_topic,
        CorrelationData=correlation,
    )
    assert publish_packet_size(topic, payload, props, qos=qos) == len(
        encoded_by_paho(topic, payload, props, qos)
    )


def test_variable_byte_integer_steps() -> None:
    assert [varint_size(n) for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
    ]


def test_limits_from_a_connack() -> None:
    connack = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    connack.MaximumPacketSize = 256
    connack.ReceiveMaximum = 2
    connack.SharedSubscriptionAvailable = 0
    assert BrokerLimits.from_connack(connack) == BrokerLimits(
        maximum_packet_size=256, receive_maximum=2, shared_subscriptions=False
    )
    assert BrokerLimits.from_connack(Properties(PacketTypes.CONNACK)) == BrokerLimits()  # type: ignore[no-untyped-call]
    assert BrokerLimits.from_connack(None) == BrokerLimits(None, 65_535, True)
