"""The one error the wire contract raises."""

from edgekernel.errors import EdgeKernelError
from edgekernel.protocol.text import shorten

MAX_MESSAGE = 1_000  # an error quotes what it refuses; never all of a hostile input


class ProtocolError(EdgeKernelError):
    """A topic, envelope or payload that breaks the wire contract.

    `reason` is a short machine-readable word (used as a counter label); the message says what is wrong,
    quoting a bounded part of the input (`topic` keeps the whole topic).
    """

    def __init__(self, reason: str, message: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        where = f" (topic {shorten(topic)!r})" if topic is not None else ""
        super().__init__(shorten(message, MAX_MESSAGE - len(where)) + where)
