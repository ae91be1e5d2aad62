"""Transports shared by every program: the MQTT 5 session and a private Mosquitto."""

from edgekernel.link.broker import BrokerTls, Mosquitto, find_mosquitto, free_port
from edgekernel.link.errors import (
    BrokerError,
    CoapError,
    LinkError,
    NotConnectedError,
    OutboxError,
    OutboxFullError,
    OutboxStorageError,
)
from edgekernel.link.mqtt import Message, MessageFactory, MqttSession, Outgoing, SessionStats
from edgekernel.link.outbox import Outbox, OutboxMessage, OutboxStats
from edgekernel.link.ranges import SeqRanges

__all__ = [
    "BrokerError",
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
    "SeqRanges",
    "SessionStats",
    "find_mosquitto",
    "free_port",
]
