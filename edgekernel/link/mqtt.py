"""One MQTT 5 session over paho-mqtt 2, for every edgekernel program.

paho's network thread does the I/O; every callback hands over to the asyncio loop at once with
``call_soon_threadsafe`` and never blocks. The session keeps a persistent broker session
(``clean_start=False`` with a session expiry), re-subscribes on every connect, publishes a birth
message on every connect and arms a Last Will before every CONNECT, and reconnects with
exponential backoff and jitter. paho's own loop waits out the backoff (set before each wait with
``reconnect_delay_set``): a wait inside a callback would run after paho stamped the attempt's start,
and paho would take a backoff longer than the keepalive for a dead connection right after CONNECT.

The broker's limits from its CONNACK (`BrokerLimits`) are honoured: a message larger than its Maximum
Packet Size is not sent (`PacketTooLargeError`); QoS 1 and 2 publishes wait in the session, not in
paho, while as many as its Receive Maximum are unacknowledged; a shared subscription on a broker that
offers none ends the session for good (`BrokerLimitError`, see `until_failed`).

    async with MqttSession(broker, client_id="demo-dev-01", subscriptions=[...]) as session:
        await session.wait_connected()
        await session.publish(topic, payload, qos=1)
        async for message in session.messages():
            ...
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgekernel.config.models import BrokerConfig
from edgekernel.link.errors import BrokerLimitError, LinkError, NotConnectedError, PacketTooLargeError
from edgekernel.link.mqtt_auth import password, tls_context
from edgekernel.link.mqtt_values import (
    BrokerLimits,
    Message,
    MessageFactory,
    Outgoing,
    QueuedPublish,
    SessionStats,
    mqtt_properties,
    publish_packet_size,
)

log = logging.getLogger(__name__)


LOG_EVERY_N_FAILURES = 10
MAX_IN_FLIGHT = 20  # our own bound on unacknowledged QoS 1/2 publishes; the broker's may be lower


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """A paho callback that raises kills paho's network thread for good: log and count instead.

    Before a connect, an error becomes a failed attempt (paho catches OSError and retries)."""

    @functools.wraps(method)
    def wrapper(self: MqttSession, *args: Any) -> None:
        try:
            method(self, *args)
        except OSError:
            raise
        except Exception as err:
            self.stats.callback_errors += 1
            self.stats.last_error = f"{method.__name__.lstrip('_')}: {err}"
            log.exception("%s: error in %s", self.client_id, method.__name__)
            if method.__name__ in ("_before_connect", "_arm_will"):
                raise ConnectionAbortedError(str(err)) from err

    return wrapper


class MqttSession:
    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: MessageFactory | None = None,
        birth: MessageFactory | None = None,
        persistent: bool = True,
        max_packet_bytes: int | None = None,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        """`on_message`, if given, takes every message in paho's network thread instead of `messages`
        (for a consumer that must keep up with the wire: it has to be quick and thread-safe; what it
        raises is logged and counted)."""
        self.broker = broker
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.stats = SessionStats()
        self._will = will
        self._birth = birth
        self._persistent = persistent
        self._max_packet_bytes = max_packet_bytes
        self._handler = on_message
        self._subscribed = asyncio.Event()
        self._connected_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # paho's thread appends; the loop is woken once per burst, not once per message
        self._inbox: collections.deque[Message | None] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._wake_pending = False
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._queue: collections.deque[QueuedPublish] = collections.deque()
        self.limits = BrokerLimits()
        """What the broker allowed in its last CONNACK."""
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self._closing = threading.Event()
        self._attempt = 0
        self._refused = False  # the broker refused this attempt's CONNECT: keep its reason
        self._started = False
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.reconnect_delay_set(0, 0)  # set before each of paho's waits by _schedule_retry
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(0)  # the session keeps to the broker's Receive Maximum
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, password(self.broker))
        if self.broker.uses_tls:
            client.tls_set_context(tls_context(self.broker))
            if self.broker.tls is not None and self.broker.tls.insecure:
                client.tls_insecure_set(True)
        client.on_pre_connect = self._before_connect
        client.on_socket_open = self._arm_will
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._closing.clear()
        properties = mqtt_properties(
            PacketTypes.CONNECT,
            SessionExpiryInterval=self.broker.session_expiry_s if self._persistent else 0,
            MaximumPacketSize=self._max_packet_bytes,
        )
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=not self._persistent,
            properties=properties,
        )
        self._client.loop_start()
        self._started = True

    async def close(self, *, last: Outgoing | None = None, timeout: float = 5.0) -> None:
        """Publish `last` (say, an offline status) if connected, then disconnect cleanly."""
        if not self._started:
            return
        if last is not None and self.connected:
            try:
                await asyncio.wait_for(self.publish_message(last), timeout)
            except (TimeoutError, LinkError) as err:
                why = str(err) or f"no acknowledgement within {timeout}s"
                log.warning("%s: could not publish the last message: %s", self.client_id, why)
        self._closing.set()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        leftover = self._client.socket()  # a connect that raced with disconnect(): paho leaves it open
        if leftover is not None:
            leftover.close()
        self._started = False
        self._connected.clear()
        futures = [*self._pending.values(), *(item.future for item in self._queue)]
        for future in futures:
            if not future.done():
                future.set_exception(NotConnectedError("session closed before the broker acknowledged"))
        self._pending.clear()
        self._queue.clear()
        self.stats.in_flight = 0
        self._deliver(None)

    async def __aenter__(self) -> MqttSession:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            why = f": {self.stats.last_error}" if self.stats.last_error else ""
            raise NotConnectedError(f"no connection to {self.broker.url} within {timeout}s{why}") from None

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Until the broker has answered the subscriptions of the current connection (SUBACK)."""
        if not self.subscriptions:
            return
        await self.wait_connected(timeout)
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            raise NotConnectedError(f"no SUBACK from {self.broker.url} within {timeout}s") from None

    # -- publishing -------------------------------------------------------------------------

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        """Publish; the future resolves when the broker acknowledges the message (QoS 1/2) or it was
        written to the socket (QoS 0). QoS 1/2 messages wait in the session while the broker's Receive
        Maximum of them are unacknowledged, or while offline, and go out in order; QoS 0 ones are
        dropped and counted while offline. A message larger than the broker's Maximum Packet Size fails
        with `PacketTooLargeError`."""
        loop = self._require_loop()
        properties = mqtt_properties(
            PacketTypes.PUBLISH,
            ContentType=content_type,
            ResponseTopic=response_topic,
            CorrelationData=correlation_data,
        )
        item = QueuedPublish(topic, payload, qos, retain, properties, loop.create_future())
        if qos == 0:
            self._send(item)
        else:
            self._queue.append(item)
            self._pump()
        return item.future

    def fits(self, topic: str, payload: bytes, *, qos: int, content_type: str | None = None) -> bool:
        """Whether such a PUBLISH fits the broker's Maximum Packet Size (as its last CONNACK said)."""
        limit = self.limits.maximum_packet_size
        props = mqtt_properties(PacketTypes.PUBLISH, ContentType=content_type)
        return limit is None or publish_packet_size(topic, payload, props, qos=qos) <= limit

    def _pump(self) -> None:
        """Hand queued QoS 1/2 messages to paho while connected and within the Receive Maximum."""
        window = min(MAX_IN_FLIGHT, self.limits.receive_maximum)
        while self._queue and self.connected and self.stats.in_flight < window:
            self._send(self._queue.popleft())

    def _send(self, item: QueuedPublish) -> None:
        future, topic = item.future, item.topic
        limit = self.limits.maximum_packet_size
        size = publish_packet_size(topic, item.payload, item.properties, qos=item.qos)
        if limit is not None and size > limit:
            self.stats.too_large += 1
            why = f"a {size}-byte PUBLISH to {topic} is larger than the broker's Maximum Packet Size {limit}"
            future.set_exception(PacketTooLargeError(why, topic=topic, size=size, limit=limit))
            return
        info = self._client.publish(
            topic, item.payload, qos=item.qos, retain=item.retain, properties=item.properties
        )
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and item.qos == 0:
            self.stats.dropped_qos0_offline += 1
            future.set_exception(NotConnectedError(f"not connected; QoS 0 message to {topic} dropped"))
            return
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            future.set_exception(LinkError(f"publish to {topic} failed: {paho.error_string(info.rc)}"))
            return
        self.stats.published += 1
        if item.qos == 0 or (info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and info.is_published()):
            future.set_result(None)  # QoS 0: handed to the socket; paho may never call on_publish
            return
        # paho keeps it (sent, or sent after the reconnect) until the broker acknowledges it
        self._pending[info.mid] = future
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        await self.publish_nowait(
            topic,
            payload,
            qos=qos,
            retain=retain,
            content_type=content_type,
            response_topic=response_topic,
            correlation_data=correlation_data,
        )

    async def publish_message(self, message: Outgoing) -> None:
        await self.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            content_type=message.content_type,
        )

    # -- receiving --------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[Message]:
        """Every message received, in order, until the session closes."""
        inbox = self._inbox
        while True:
            while inbox:
                message = inbox.popleft()
                if message is None:
                    return
                self.stats.received += 1
                yield message
            self._wake_pending = False
            if inbox:  # arrived after the last popleft, before the flag was cleared
                continue
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    @property
    def backlog(self) -> int:
        return len(self._inbox)

    def _deliver(self, message: Message | None) -> None:
        """From any thread: queue a message; wake the loop unless a wake-up is already on its way."""
        self._inbox.append(message)
        if not self._wake_pending:
            self._wake_pending = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._inbox_ready.set)

    # -- paho's thread: hand over, never block ----------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise NotConnectedError("session not started (use `async with` or start())")
        return self._loop

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(func, *args)

    def _schedule_retry(self, client: paho.Client) -> None:
        """After a failed attempt or a lost connection, before paho waits to try again: how long."""
        if self._connected_at is not None:
            # after a connection that held, start the backoff over; after one that was dropped at
            # once (say, another client took the session over) keep backing off
            stable = time.monotonic() - self._connected_at >= self.broker.reconnect.max_delay_s
            self._attempt = 1 if stable else self._attempt
            self._connected_at = None
        delay = self._backoff(max(1, self._attempt))
        # min = max: paho waits exactly this long (its hints say int; it waits any number of seconds)
        client.reconnect_delay_set(cast(int, delay), cast(int, delay))

    @_guarded
    def _before_connect(self, client: paho.Client, userdata: object) -> None:
        if self._closing.is_set():  # close() ended the wait: no new connection (paho catches OSError)
            raise ConnectionAbortedError("session closed")
        self._attempt += 1
        self._refused = False

    @_guarded
    def _arm_will(self, client: paho.Client, userdata: object, sock: object) -> None:
        """Once the broker took the connection, before CONNECT: a new Will (for a device, with a new
        boot id, so one per connection the broker saw, not per refused attempt)."""
        if self._will is not None:
            will = self._will()
            client.will_set(
                will.topic,
                will.payload,
                qos=will.qos,
                retain=will.retain,
                properties=mqtt_properties(PacketTypes.WILLMESSAGE, ContentType=will.content_type),
            )

    def _backoff(self, attempt: int) -> float:
        cfg = self.broker.reconnect
        delay: float = min(cfg.max_delay_s, cfg.min_delay_s * 2 ** min(attempt - 1, 30))
        return delay * (1 - cfg.jitter * random.random())

    @_guarded
    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.stats.connect_failures += 1
            self.stats.last_error = f"broker refused the connection: {reason}"
            self._refused = True
            log.warning("%s: %s", self.client_id, self.stats.last_error)
            return
        self.limits = limits = BrokerLimits.from_connack(properties)
        shared = [topic for topic, _ in self.subscriptions if topic.startswith("$share/")]
        if shared and not limits.shared_subscriptions:
            self._closing.set()
            client.disconnect()
            failure = BrokerLimitError(
                f"the broker at {self.broker.url} offers no shared subscriptions (its CONNACK says "
                f"Shared Subscription Available 0), so {shared[0]!r} cannot be subscribed",
                setting="share_group",
            )
            self.stats.last_error = str(failure)
            log.error("%s: %s", self.client_id, failure)
            self._call(self._fail, failure)
            return
        self._connected_at = time.monotonic()
        self._call(self._subscribed.clear)
        if self.subscriptions:
            client.subscribe([(t, SubscribeOptions(qos=q)) for t, q in self.subscriptions])
        self._call(self._mark_connected, True, self._birth() if self._birth is not None else None)

    @_guarded
    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        # paho calls this inside its `except OSError` block: the exception says why (refused,
        # unreachable, TLS certificate or host name not verified)
        if self._closing.is_set():
            return
        self._schedule_retry(client)
        err = sys.exc_info()[1]
        self.stats.connect_failures += 1
        self.stats.last_error = f"cannot reach {self.broker.url}" + (f": {err}" if err else "")
        if self.stats.connect_failures % LOG_EVERY_N_FAILURES == 1:
            log.warning(
                "%s: %s (%d failed attempts so far; retrying)",
                self.client_id,
                self.stats.last_error,
                self.stats.connect_failures,
            )

    @_guarded
    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure and not self._refused:  # after a refusal, paho says "Protocol error"
            self.stats.last_error = f"disconnected: {reason}"
            if not self._closing.is_set():
                log.warning("%s: lost the connection to %s: %s", self.client_id, self.broker.url, reason)
        if not self._closing.is_set():
            self._schedule_retry(client)
        self._call(self._mark_connected, False)

    @_guarded
    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for (topic_filter, _), reason in zip(self.subscriptions, reasons, strict=False):
            if reason.is_failure:
                self.stats.subscribe_failures += 1
                self.stats.last_error = f"broker refused the subscription to {topic_filter!r}: {reason}"
                log.warning("%s: %s", self.client_id, self.stats.last_error)
        log.debug("%s: subscribed to %s", self.client_id, ", ".join(f for f, _ in self.subscriptions))
        self._call(self._subscribed.set)

    @_guarded
    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        message = Message.from_paho(msg)
        if self._handler is None:
            self._deliver(message)
        else:
            self.stats.received += 1
            self._handler(message)

    @_guarded
    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self._resolve, mid, None if not reason.is_failure else str(reason))

    # -- back on the loop -------------------------------------------------------------------

    def _mark_connected(self, up: bool, birth: Outgoing | None = None) -> None:
        if up:
            self.stats.connects += 1
            self.stats.connected_since = time.time()
            self._connected.set()
            if birth is not None:  # first, before what waited offline
                item = QueuedPublish(
                    birth.topic,
                    birth.payload,
                    birth.qos,
                    birth.retain,
                    mqtt_properties(PacketTypes.PUBLISH, ContentType=birth.content_type),
                    self._require_loop().create_future(),
                )
                item.future.add_done_callback(self._birth_settled)
                if birth.qos:
                    self._queue.appendleft(item)
                else:
                    self._send(item)
            self._pump()
        elif self._connected.is_set():
            self.stats.disconnects += 1
            self.stats.connected_since = None
            self._connected.clear()

    def _birth_settled(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.stats.last_error = f"birth message: {future.exception()}"
            log.warning("%s: %s", self.client_id, self.stats.last_error)

    def _fail(self, failure: BaseException) -> None:
        self._failure = failure
        self._failed.set()

    async def until_failed(self) -> None:
        """Returns never: raises the error that ended the session for good (`BrokerLimitError`)."""
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    def _resolve(self, mid: int, failure: str | None) -> None:
        future = self._pending.pop(mid, None)
        if future is not None:
            self.stats.in_flight -= 1
            self._pump()
        if future is None or future.done():
            return
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(LinkError(f"broker refused message {mid}: {failure}"))
