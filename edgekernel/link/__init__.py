"""Transports shared by every program: the MQTT 5 session and a private Mosquitto."""

from edgekernel.link.broker import BrokerTls, Mosquitto, find_mosquitto, free_port
from edgekernel.link.errors import BrokerError, CoapError, LinkError, NotConnectedError
from edgekernel.link.mqtt import Message, MessageFactory, MqttSession, Outgoing, SessionStats

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
    "Outgoing",
    "SessionStats",
    "find_mosquitto",
    "free_port",
]
