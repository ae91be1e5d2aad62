"""Publishes the device's own warnings and errors on ``…/log`` (QoS 0), so an operator sees them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from pydantic import JsonValue

from edgekernel.protocol import Encoding, Envelope, encode

MAX_MESSAGE = 2000


class MqttLogHandler(logging.Handler):
    """Hands each record to the event loop; never blocks the thread that logged it."""

    def __init__(
        self,
        src: str,
        publish: Callable[[bytes], None],
        *,
        encoding: Encoding = Encoding.JSON,
        level: int = logging.WARNING,
    ) -> None:
        super().__init__(level)
        self._src = src
        self._publish = publish
        self._encoding = encoding
        self._loop = asyncio.get_running_loop()
        self._guard = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._guard, "busy", False) or self._loop.is_closed():
            return
        self._guard.busy = True
        try:
            body: dict[str, JsonValue] = {
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": self.format(record)[:MAX_MESSAGE],
            }
            envelope = Envelope.new(src=self._src, type="log", body=body, ts=record.created)
            self._loop.call_soon_threadsafe(self._publish, encode(envelope, self._encoding))
        except Exception:  # a log handler must never raise into the code that logged
            self.handleError(record)
        finally:
            self._guard.busy = False
