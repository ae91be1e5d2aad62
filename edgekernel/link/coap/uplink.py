"""`CoapUplink`: a device's link to its gateway over CoAP alone, in the shape the kernel uses of
`MqttSession` (`start`, `connected`, `wait_connected`, `publish_nowait`, `messages`, `close`, `stats`).

Each envelope is POSTed, confirmable, to the gateway's ``/ingest``, at most `window` at a time; the seq
ranges in the answer go to `on_ack`, just as an ``…/ack`` message does over MQTT. UDP has no
connection, so the uplink counts as connected from a first answer of the gateway until a post goes
unanswered for `timeout_s` or is answered with an error that is not about the envelope; it then fails
every queued post, probes the gateway's ``/health`` with backoff, and counts a new connect when it
answers. The kernel's sender then starts again from the oldest message the gateway has not
acknowledged. A 4.00 or 4.13 answer refuses that one envelope for good (the gateway keeps it as a dead
letter): it goes to `on_refused`, counted by code, and the link stays up. A 4.08 (a block-wise upload
the gateway could not assemble) or a 5.03 (busy) is posted again, up to `TRIES` times in all, before the
gateway counts as gone. An envelope queued again while the same bytes are queued or in flight is not
posted twice: both callers get the one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from edgekernel.config.models import ReconnectConfig
from edgekernel.link.coap.client import CoapClient
from edgekernel.link.errors import CoapError, LinkError, NotConnectedError
from edgekernel.link.mqtt_values import Message, Outgoing, SessionStats
from edgekernel.protocol import Encoding
from edgekernel.protocol.bodies import AckBody

log = logging.getLogger(__name__)

AckHandler = Callable[[AckBody], None]
RefusedHandler = Callable[[bytes, CoapError], None]
FINAL_REFUSALS = frozenset({"4.00", "4.13"})  # about the envelope itself: sending it again cannot help
RETRIED = frozenset({"4.08", "5.03"})  # about this one transfer: the next may go through
TRIES = 3


@dataclass(slots=True)
class _Post:
    payload: bytes
    qos: int
    future: asyncio.Future[None]


class CoapUplink:
    def __init__(
        self,
        gateway_url: str,
        *,
        encoding: Encoding,
        on_ack: AckHandler,
        on_refused: RefusedHandler | None = None,
        window: int = 16,
        timeout_s: float = 10.0,
        reconnect: ReconnectConfig | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.encoding = encoding
        self.window = window
        self.timeout_s = timeout_s
        self.reconnect = reconnect or ReconnectConfig()
        self.stats = SessionStats()
        self.refused: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self._on_ack = on_ack
        self._on_refused = on_refused
        self._client = CoapClient(timeout=timeout_s)
        self._stack = contextlib.AsyncExitStack()
        self._queue: deque[_Post] = deque()
        self._pending: dict[bytes, _Post] = {}  # queued or in flight, by payload
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._gone = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def ingest_uri(self) -> str:
        return f"{self.gateway_url}/ingest"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backlog(self) -> int:
        """Posts queued behind the window (the MQTT session's figure is its inbox; this link has none)."""
        return len(self._queue)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._tasks.append(asyncio.create_task(self._open(), name="coap-uplink"))

    async def _open(self) -> None:
        await self._stack.enter_async_context(self._client)
        self._tasks.append(asyncio.create_task(self._probe(), name="coap-probe"))
        for n in range(self.window):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"coap-post-{n}"))

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            why = f": {self.stats.last_error}" if self.stats.last_error else ""
            raise NotConnectedError(f"no answer from {self.gateway_url} within {timeout}s{why}") from None

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
    ) -> asyncio.Future[None]:
        """Queue an envelope for the gateway; the future resolves once it has answered. While the
        gateway is gone, QoS 0 envelopes are dropped and counted, others wait for it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed.is_set():
            future.set_exception(NotConnectedError("the CoAP uplink is closed"))
        elif qos == 0 and not self.connected:
            self.stats.dropped_qos0_offline += 1
            future.set_exception(NotConnectedError(f"no gateway; QoS 0 envelope for {topic} dropped"))
        elif (same := self._pending.get(payload)) is not None and not same.future.done():
            self.retried["coalesced"] += 1
            return same.future
        else:
            self.stats.published += 1
            post = _Post(payload, qos, future)
            self._pending[payload] = post
            future.add_done_callback(lambda _: self._forget(post))
            self._queue.append(post)
            self._wake.set()
        return future

    def _forget(self, post: _Post) -> None:
        if self._pending.get(post.payload) is post:
            del self._pending[post.payload]

    async def messages(self) -> AsyncIterator[Message]:
        """Nothing comes to a device over this link but answers; ends when the uplink closes."""
        await self._closed.wait()
        return
        yield  # pragma: no cover

    async def close(self, *, last: Outgoing | None = None, timeout: float = 5.0) -> None:
        """Post `last` (say, an offline status) if the gateway is there, then stop."""
        if not self._started or self._closed.is_set():
            return
        if last is not None and self.connected:
            try:
                await self._post(last.payload, timeout=timeout)
            except LinkError as err:
                log.warning("could not post the last envelope to %s: %s", self.gateway_url, err)
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(NotConnectedError("the CoAP uplink closed before the gateway answered"))
        self._connected.clear()
        await self._stack.aclose()

    # -- posting ----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._connected.wait()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            post = self._queue.popleft()
            if post.future.done():
                continue
            connection = self.stats.connects
            try:
                await self._post_tries(post.payload)
            except CoapError as err:
                post.future.set_exception(err)
                if err.code not in FINAL_REFUSALS:
                    if connection == self.stats.connects:  # not a post left over from a lost link
                        self._lost(err)
                    continue
                self.refused[err.code] += 1
                log.error("the gateway refused an envelope for good: %s", err)
                if self._on_refused is not None:
                    self._on_refused(post.payload, err)
                continue
            if not post.future.done():
                post.future.set_result(None)

    async def _post_tries(self, payload: bytes) -> None:
        for attempt in range(1, TRIES + 1):
            try:
                await self._post(payload)
                return
            except CoapError as err:
                if err.code not in RETRIED or attempt == TRIES:
                    raise
                self.retried[err.code] += 1
                log.info("the gateway answered %s (%s): posting again", err.code, err.diagnostic)
                wait = min(float(err.max_age), self.timeout_s) if err.max_age else 0.05 * attempt
                await asyncio.sleep(wait * (1 + random.random()))

    async def _post(self, payload: bytes, *, timeout: float | None = None) -> None:
        ack = await self._client.post_encoded(self.ingest_uri, payload, self.encoding, timeout=timeout)
        if ack is not None:
            self._on_ack(ack)

    def _lost(self, err: CoapError) -> None:
        if not self.connected:
            return
        self._connected.clear()
        self._gone.set()
        self.stats.disconnects += 1
        self.stats.connected_since = None
        self.stats.last_error = str(err)
        log.warning("gateway %s is gone (%s): holding what is unacknowledged", self.gateway_url, err)
        self._fail_queued(NotConnectedError(f"gateway {self.gateway_url} stopped answering"))

    def _fail_queued(self, err: LinkError) -> None:
        while self._queue:
            post = self._queue.popleft()
            if not post.future.done():
                post.future.set_exception(err)

    async def _probe(self) -> None:
        """While the gateway is gone: ask for its /health with backoff; its answer reconnects."""
        attempt = 0
        while True:
            if self.connected:
                await self._gone.wait()
                attempt = 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            try:
                await self._client.get(f"{self.gateway_url}/health", timeout=min(self.timeout_s, 5.0))
            except CoapError as err:
                self.stats.connect_failures += 1
                self.stats.last_error = str(err)
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
                continue
            self.stats.connects += 1
            self.stats.connected_since = asyncio.get_running_loop().time()
            self._gone.clear()
            self._connected.set()
            self._wake.set()
            attempt = 0
            log.info("gateway %s answers", self.gateway_url)

    def _backoff(self, attempt: int) -> float:
        cfg = self.reconnect
        delay: float = min(cfg.max_delay_s, cfg.min_delay_s * 2 ** min(attempt - 1, 16))
        return delay * (1 - cfg.jitter * random.random())
