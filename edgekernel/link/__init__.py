"""Transports shared by every program: the MQTT 5 session and a private Mosquitto."""

from edgekernel.link.broker import BrokerTls, Mosquitto, find_mosquitto, free_port
from edgekernel.link.errors import (
    BrokerError,
    BrokerLimitError,
    CoapError,
    LinkError,
    NotConnectedError,
    OutboxError,
    OutboxFullError,
    OutboxStorageError,
    PacketTooLargeError,
)
from edgekernel.link.mqtt import MqttSession
from edgekernel.link.mqtt_values import BrokerLimits, Message, MessageFactory, Outgoing, SessionStats
from edgekernel.link.outbox import Outbox, OutboxMessage, OutboxStats
from edgekernel.link.ranges import SeqRanges

__all__ = [
    "BrokerError",
    "BrokerLimitError",
    "BrokerLimits",
    "BrokerTls",
    "CoapError",
    "LinkError",
    "Message",
    "MessageFactory",
    "Mosquitto",
    "MqttSession",
    "NotConnectedError",
    "Outbox",
    "OutboxError",
    "OutboxFullError",
    "OutboxMessage",
    "OutboxStats",
    "OutboxStorageError",
    "Outgoing",
    "PacketTooLargeError",
    "SeqRanges",
    "SessionStats",
    "find_mosquitto",
    "free_port",
]
