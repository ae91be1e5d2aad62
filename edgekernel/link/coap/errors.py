"""The `CoapError` subclasses a handler raises to refuse a request, and a client raises on receiving one.

CoapError            any other error response (.code), or no response at all (.code is None)
├── CoapBadRequest   4.00: the request's content is wrong; the diagnostic names what
├── CoapNotFound     4.04: no such resource (an unknown model, stream or path)
└── CoapUnavailable  5.03: overloaded or not ready; retry after .max_age seconds
"""

from __future__ import annotations

from edgekernel.link.errors import CoapError

BAD_REQUEST = "4.00"
NOT_FOUND = "4.04"
NOT_ACCEPTABLE = "4.06"
REQUEST_ENTITY_INCOMPLETE = "4.08"
REQUEST_ENTITY_TOO_LARGE = "4.13"
UNSUPPORTED_CONTENT_FORMAT = "4.15"
INTERNAL_SERVER_ERROR = "5.00"
SERVICE_UNAVAILABLE = "5.03"
DEFAULT_RETRY_S = 1


class CoapBadRequest(CoapError):
    code = BAD_REQUEST


class CoapNotFound(CoapError):
    code = NOT_FOUND


class CoapUnavailable(CoapError):
    code = SERVICE_UNAVAILABLE

    def __init__(
        self,
        diagnostic: str,
        *,
        code: str | None = None,
        max_age: int | None = DEFAULT_RETRY_S,
        uri: str | None = None,
    ) -> None:
        super().__init__(diagnostic, code=code, max_age=max_age, uri=uri)


_BY_CODE: dict[str, type[CoapError]] = {
    BAD_REQUEST: CoapBadRequest,
    NOT_FOUND: CoapNotFound,
    SERVICE_UNAVAILABLE: CoapUnavailable,
}


def error_for(code: str, diagnostic: str, *, max_age: int | None, uri: str) -> CoapError:
    """The error a client raises for an unsuccessful response."""
    cls = _BY_CODE.get(code, CoapError)
    return cls(diagnostic or "(no diagnostic)", code=code, max_age=max_age, uri=uri)
