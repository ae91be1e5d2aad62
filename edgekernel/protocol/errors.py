"""The one error the wire contract raises."""

from edgekernel.errors import EdgeKernelError


class ProtocolError(EdgeKernelError):
    """A topic, envelope or payload that breaks the wire contract.

    `reason` is a short machine-readable word (used as a counter label); the message says what is wrong.
    """

    def __init__(self, reason: str, message: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        where = f" (topic {topic!r})" if topic is not None else ""
        super().__init__(f"{message}{where}")
