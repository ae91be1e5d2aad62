"""What the device sends of its own accord: telemetry batches (sensors' and agents') and events.

A durable message is committed to the outbox with a seq of the outbox's seq space (the kernel's
sender publishes it and the gateway acknowledges it); a best-effort batch goes out at QoS 0 without a
seq (nothing is missing when it is lost), or not at all while offline. A batch larger than the
broker's Maximum Packet Size goes in parts that fit. A refusal (the overflow policy, a full or
failing disk) is counted and returned as False, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from pydantic import JsonValue

from edgekernel.device.telemetry import split_to_fit
from edgekernel.link import MqttSession, Outbox, OutboxFullError, OutboxStorageError
from edgekernel.link.coap import CoapServer, CoapUplink
from edgekernel.protocol import CONTENT_TYPES, Encoding, Envelope, EventBody, TelemetryBody, encode, topics
from edgekernel.protocol.envelope import MAX_EPOCH, MAX_SEQ

log = logging.getLogger(__name__)

SIZE_MARGIN = 8  # an envelope's time may be written with a few more digits when it is committed


class Publisher:
    def __init__(
        self,
        fleet: str,
        device: str,
        *,
        encoding: Encoding,
        session: MqttSession | CoapUplink,
        outbox: Outbox,
        coap: CoapServer | None,
        counters: Counter[str],
    ) -> None:
        self.fleet = fleet
        self.device = device
        self.encoding = encoding
        self.content_type = CONTENT_TYPES[encoding]
        self.session = session
        self.outbox = outbox
        self.coap = coap
        self.counters = counters

    async def telemetry(self, stream: str, body: TelemetryBody, *, best_effort: bool) -> bool:
        """Send one batch of `stream`; False when the outbox refused (some of) it."""
        topic = topics.telemetry(self.fleet, self.device, stream)
        parts = split_to_fit(body, self._fits(topic, qos=0 if best_effort else 1))
        self.counters["telemetry_split"] += len(parts) - 1
        sent = True
        for part in parts:
            sent = await self._part(stream, topic, part, best_effort=best_effort) and sent
        return sent

    async def event(self, event_type: str, agent: str | None, data: JsonValue) -> bool:
        """An event on ``…/events/{type}``, durable through the outbox."""
        body = EventBody(type=event_type, agent=agent, data=data)

        def payload(seq: int) -> bytes:
            envelope = body.to_envelope(self.device, seq=seq, epoch=self.outbox.epoch)
            return encode(envelope, self.encoding)

        if not await self.commit(
            topics.events(self.fleet, self.device, event_type), payload, f"events/{event_type}"
        ):
            return False
        self.counters["events_sent"] += 1
        return True

    def _fits(self, topic: str, *, qos: int) -> Callable[[TelemetryBody], bool]:
        """Whether a batch fits the broker's packet limit, sized with the widest seq and epoch (and a
        margin for its time, written when it is committed)."""
        session = self.session
        if not isinstance(session, MqttSession) or session.limits.maximum_packet_size is None:
            return lambda body: True

        def fits(body: TelemetryBody) -> bool:
            envelope = body.to_envelope(self.device, seq=MAX_SEQ, epoch=MAX_EPOCH)
            padded = encode(envelope, self.encoding) + bytes(SIZE_MARGIN)
            return session.fits(topic, padded, qos=qos, content_type=self.content_type)

        return fits

    async def _part(self, stream: str, topic: str, body: TelemetryBody, *, best_effort: bool) -> bool:
        made: list[Envelope] = []

        def payload(seq: int | None) -> bytes:
            envelope = body.to_envelope(
                self.device, seq=seq, epoch=self.outbox.epoch if seq is not None else 0
            )
            made.append(envelope)
            return encode(envelope, self.encoding)

        if best_effort:
            self.watch(
                self.session.publish_nowait(topic, payload(None), qos=0, content_type=self.content_type)
            )
        elif not await self.commit(topic, payload, stream):
            return False
        self.counters["telemetry_sent"] += 1
        self.counters["samples_sent"] += len(body.samples)
        if self.coap is not None and made:
            self.coap.publish(stream, made[-1])
        return True

    async def commit(self, topic: str, payload: Callable[[int], bytes], stream: str) -> bool:
        """Commits a durable message to the outbox; a refusal (overflow policy, full or failing disk)
        is counted, not fatal."""
        try:
            await self.outbox.put(topic, payload, stream=stream)
        except OutboxFullError as err:  # drop-newest, or block past its timeout
            self.counters["outbox_refused"] += 1
            log.warning("%s", err)
            return False
        except OutboxStorageError as err:  # refused and counted until the disk recovers
            key = f"outbox_refused:{err.reason}"
            self.counters[key] += 1
            if self.counters[key] % 1000 == 1:
                log.error("%s (%d refused so far)", err, self.counters[key])
            return False
        return True

    def watch(self, future: asyncio.Future[None]) -> None:
        future.add_done_callback(self.count_failure)

    def count_failure(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.counters["publish_failed"] += 1
