"""The wire contract, sans I/O: topics, the envelope, typed bodies and codecs (JSON, CBOR)."""

from edgekernel.protocol import topics
from edgekernel.protocol.bodies import (
    Capabilities,
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
from edgekernel.protocol.inbound import Inbound, inbound
from edgekernel.protocol.topics import Topic, TopicKind

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_PAYLOAD",
    "SCHEMA_VERSION",
    "Capabilities",
    "Encoding",
    "Envelope",
    "Inbound",
    "InferenceSummary",
    "MessageType",
    "ModelState",
    "ProtocolError",
    "ReportedBody",
    "Sample",
    "StatusBody",
    "TelemetryBody",
    "Topic",
    "TopicKind",
    "decode",
    "encode",
    "inbound",
    "topics",
]
