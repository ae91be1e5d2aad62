"""The wire contract, sans I/O: topics, the envelope, typed bodies and codecs (JSON, CBOR)."""

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
from edgekernel.protocol.envelope import SCHEMA_VERSION, Envelope, MessageType
from edgekernel.protocol.errors import ProtocolError
from edgekernel.protocol.inbound import Inbound, check_seq, inbound
from edgekernel.protocol.times import check_times
from edgekernel.protocol.topics import Topic, TopicKind

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
