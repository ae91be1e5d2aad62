"""The wire contract, sans I/O: topics, the envelope, typed bodies and codecs (JSON, CBOR).

The signed commands' names are imported on first use: they need `cryptography` (8 MB and a tenth of a
second), which an agent process, using only `Sample`, does not."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgekernel.protocol import topics
from edgekernel.protocol.bodies import (
    AgentReport,
    BacklogSummary,
    Capabilities,
    EventBody,
    InferenceSummary,
    ModelState,
    ReportedBody,
    Sample,
    StatusBody,
    TelemetryBody,
)
from edgekernel.protocol.codec import (
    CONTENT_TYPES,
    DEFAULT_MAX_PAYLOAD,
    Encoding,
    decode,
    encode,
)
from edgekernel.protocol.envelope import SCHEMA_VERSION, Envelope, MessageType
from edgekernel.protocol.errors import ProtocolError
from edgekernel.protocol.inbound import Inbound, check_seq, inbound
from edgekernel.protocol.times import check_times
from edgekernel.protocol.topics import Topic, TopicKind

if TYPE_CHECKING:
    from edgekernel.protocol.commands import (
        CommandBody,
        CommandVerifier,
        FleetKey,
        FleetVerifier,
        ReplyBody,
        ReplyCache,
        ReplyError,
        VerifiedCommand,
        sign_command,
        signing_payload,
    )

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_PAYLOAD",
    "SCHEMA_VERSION",
    "AgentReport",
    "BacklogSummary",
    "Capabilities",
    "CommandBody",
    "CommandVerifier",
    "Encoding",
    "Envelope",
    "EventBody",
    "FleetKey",
    "FleetVerifier",
    "Inbound",
    "InferenceSummary",
    "MessageType",
    "ModelState",
    "ProtocolError",
    "ReplyBody",
    "ReplyCache",
    "ReplyError",
    "ReportedBody",
    "Sample",
    "StatusBody",
    "TelemetryBody",
    "Topic",
    "TopicKind",
    "VerifiedCommand",
    "check_seq",
    "check_times",
    "decode",
    "encode",
    "inbound",
    "sign_command",
    "signing_payload",
    "topics",
]

_COMMANDS = frozenset(
    {
        "CommandBody",
        "CommandVerifier",
        "FleetKey",
        "FleetVerifier",
        "ReplyBody",
        "ReplyCache",
        "ReplyError",
        "VerifiedCommand",
        "sign_command",
        "signing_payload",
    }
)


def __getattr__(name: str) -> object:
    if name not in _COMMANDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("edgekernel.protocol.commands"), name)
    globals()[name] = value
    return value
