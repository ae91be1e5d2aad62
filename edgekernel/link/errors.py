"""Errors of the transports."""

from edgekernel.errors import EdgeKernelError


class LinkError(EdgeKernelError):
    """The broker or another transport failed us."""


class BrokerError(LinkError):
    """A private Mosquitto could not be found, started or stopped."""


class NotConnectedError(LinkError):
    """The session is not connected and the operation needs it to be."""


class OutboxError(LinkError):
    """The outbox cannot be opened (corrupt, not an outbox, in use), is closed, or failed to commit.

    `path` names the outbox file.
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        self.path = path
        super().__init__(message)


class OutboxFullError(OutboxError):
    """The outbox had no room for a message: refused by `drop-newest`, or `block` timed out.

    `policy` is the overflow policy, `size` the message's bytes, `max_bytes` the bound.
    """

    def __init__(self, message: str, *, path: object, policy: str, size: int, max_bytes: int) -> None:
        self.policy = policy
        self.size = size
        self.max_bytes = max_bytes
        super().__init__(message, path=path)


class OutboxStorageError(OutboxError):
    """The outbox's disk refused a write: it is full (`reason` "disk_full") or failed ("io_error").

    The transaction was undone and what was committed before is kept; writes succeed again once the
    disk does.
    """

    def __init__(self, message: str, *, path: object, reason: str) -> None:
        self.reason = reason
        super().__init__(message, path=path)


class CoapError(LinkError):
    """A CoAP exchange failed, or a server refuses a request.

    `code` is the response code in dotted form ("4.04"), or None when no response came (timeout,
    network error, bad URI); `diagnostic` is the human-readable reason a server sends as the payload
    of an error response; `max_age` is how many seconds a 5.03 asks the client to wait before retrying.
    A server renders a `CoapError` raised by a handler into that response.
    """

    code: str | None = None

    def __init__(
        self,
        diagnostic: str,
        *,
        code: str | None = None,
        max_age: int | None = None,
        uri: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.diagnostic = diagnostic
        self.max_age = max_age
        self.uri = uri
        where = " ".join(part for part in (uri, self.code) if part)
        super().__init__(f"{where}: {diagnostic}" if where else diagnostic)


class PacketTooLargeError(LinkError):
    """A message does not fit the broker's Maximum Packet Size (from its CONNACK): it was not sent.

    `topic`, `size` (the PUBLISH packet's bytes) and `limit`.
    """

    def __init__(self, message: str, *, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(message)


class BrokerLimitError(LinkError):
    """The broker cannot do what the configuration asks (say, shared subscriptions it does not offer):
    retrying will not help. `setting` names what to change."""

    def __init__(self, message: str, *, setting: str) -> None:
        self.setting = setting
        super().__init__(message)
