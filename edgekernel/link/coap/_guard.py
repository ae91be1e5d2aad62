"""Guards around two places where aiocoap 0.4 turns what a peer does into tracebacks.

- A datagram that is not a CoAP message aiocoap can decode (say, an option that should be UTF-8 and is
  not) raises out of its UDP transport, and asyncio logs the traceback, one per datagram: an easy log
  flood. `guard_datagrams` decodes each datagram first; what cannot be decoded is counted
  (``datagrams-dropped:undecodable``) and logged in one line at most once per `LOG_INTERVAL_S`.
- A peer that goes away while a response is being sent to it (an observer whose port is closed makes
  the send fail at once) ends aiocoap's pipe in the middle of its own bookkeeping, which then fails
  with "'bool' object is not iterable" in a task nobody awaits. `GuardedPipe` drops what is sent into
  a pipe that has ended, as nobody listens there any more.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Final

import aiocoap  # type: ignore[import-untyped]

log = logging.getLogger("edgekernel.link.coap")

LOG_INTERVAL_S: Final = 10.0
UNDECODABLE: Final = "datagrams-dropped:undecodable"


class GuardedPipe:
    """An aiocoap pipe whose ``add_response`` and ``add_exception`` do nothing once the peer is gone."""

    def __init__(self, pipe: Any, counters: Counter[str]) -> None:
        self._pipe = pipe
        self._counters = counters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def add_response(self, response: Any, is_last: bool = False) -> None:
        self._send(self._pipe.add_response, response, is_last)

    def add_exception(self, exception: BaseException) -> None:
        self._send(self._pipe.add_exception, exception)

    def _ended(self) -> bool:
        return getattr(self._pipe, "_event_callbacks", None) is False

    def _send(self, add: Any, *args: Any) -> None:
        if self._ended():
            self._counters["responses-dropped:peer-gone"] += 1
            return
        try:
            add(*args)
        except TypeError:
            if not self._ended():
                raise
            self._counters["responses-dropped:peer-gone"] += 1


class _DropLog:
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self.unlogged = 0
        self.logged_at = -1.0  # never

    def drop(self, address: Any, err: Exception) -> None:
        self.counters[UNDECODABLE] += 1
        self.unlogged += 1
        now = time.monotonic()
        if self.logged_at >= 0 and now - self.logged_at < LOG_INTERVAL_S:
            return
        reason = f"{type(err).__name__}: {err}"[:120]
        first = self.logged_at < 0
        log.warning(
            "dropped %d undecodable CoAP datagram(s)%s, the last from %s (%s); logged at most every %g s",
            self.unlogged,
            "" if first else f" in the last {now - self.logged_at:.0f} s",
            _peer(address),
            reason,
            LOG_INTERVAL_S,
        )
        self.unlogged = 0
        self.logged_at = now


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return f"{host}:{address[1]}"
    return "an unknown peer"


def guard_datagrams(context: Any, counters: Counter[str]) -> None:
    """Make every UDP transport of `context` drop, count and seldom log the datagrams it cannot decode."""
    drops = _DropLog(counters)
    for interface in context.request_interfaces:
        transport: Any = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        received = getattr(transport, "datagram_msg_received", None)
        if received is None:
            continue

        def guarded(data: bytes, ancdata: Any, flags: int, address: Any, received: Any = received) -> None:
            try:
                aiocoap.Message.decode(data)
            except Exception as err:  # whatever aiocoap's decoder raises, the datagram is not ours to take
                drops.drop(address, err)
                return
            received(data, ancdata, flags, address)

        transport.datagram_msg_received = guarded
