"""Transports shared by every program: the MQTT 5 session and a private Mosquitto."""

from edgekernel.link.broker import Mosquitto, find_mosquitto, free_port
from edgekernel.link.errors import BrokerError, LinkError, NotConnectedError
from edgekernel.link.mqtt import Message, MqttSession, Outgoing, SessionStats

__all__ = [
    "BrokerError",
    "LinkError",
    "Message",
    "Mosquitto",
    "MqttSession",
    "NotConnectedError",
    "Outgoing",
    "SessionStats",
    "find_mosquitto",
    "free_port",
]
