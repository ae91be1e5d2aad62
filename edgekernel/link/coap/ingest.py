"""``POST /ingest``: a gateway takes one envelope from a CoAP-only device and acknowledges it.

The envelope is decoded by `edgekernel.protocol` (size limit first) and checked as if it had arrived
on its MQTT topic: a device-to-gateway type, a valid body for status, reported and telemetry, and a seq
on nothing but telemetry (best-effort telemetry has none). The handler returns once the envelope is
stored, with the seq ranges the gateway holds (an `AckBody`, sent back in a 2.04 Changed as
``{"ranges": [[first, last], ...], "epoch": …}``) or None for an envelope that is not acknowledged
(one without a seq); the device then frees those rows of its outbox, just as it does on an ``…/ack``
message over MQTT.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiocoap  # type: ignore[import-untyped]

from edgekernel.link.coap._base import Resource, content, request_encoding, response_encoding
from edgekernel.link.coap._block1 import Block1Assembler
from edgekernel.link.coap.errors import CoapBadRequest
from edgekernel.link.coap.formats import dumps
from edgekernel.link.coap.resources import LINK_CT
from edgekernel.protocol import (
    Envelope,
    ProtocolError,
    ReportedBody,
    StatusBody,
    TelemetryBody,
    check_seq,
    decode,
)
from edgekernel.protocol.bodies import AckBody
from edgekernel.protocol.codec import detect

IngestHandler = Callable[[Envelope], Awaitable[AckBody | None]]
RefusedHandler = Callable[[bytes, ProtocolError], None]
FROM_DEVICE: Final = frozenset({"status", "reported", "telemetry", "event", "log"})


def check_ingest(envelope: Envelope) -> None:
    """The checks a topic would imply, or `ProtocolError` saying which one fails."""
    if envelope.type not in FROM_DEVICE:
        allowed = ", ".join(sorted(FROM_DEVICE))
        raise ProtocolError("wrong-type", f"a {envelope.type} envelope is not for a gateway ({allowed})")
    check_seq(envelope)
    if envelope.type == "telemetry":
        TelemetryBody.from_envelope(envelope)
    elif envelope.type == "status":
        StatusBody.from_envelope(envelope)
    elif envelope.type == "reported":
        ReportedBody.from_envelope(envelope)


class IngestResource(Resource):
    label = "ingest"
    rt = "ek.ingest"
    ct = LINK_CT

    def __init__(
        self,
        counters: Counter[str],
        max_payload: int,
        *,
        handler: IngestHandler,
        refused: RefusedHandler | None = None,
        uploads: Block1Assembler | None = None,
    ) -> None:
        super().__init__(counters, max_payload, uploads=uploads)
        self.handler = handler
        self.refused = refused

    async def render_post(self, request: Any) -> Any:
        encoding = request_encoding(request)
        answer = response_encoding(request, encoding)
        payload = bytes(request.payload)
        try:
            if payload and detect(payload) is not encoding:
                raise ProtocolError("wrong-format", f"the payload is not {encoding.value.upper()}")
            envelope = decode(payload, max_size=self.max_payload)
            check_ingest(envelope)
        except ProtocolError as err:
            self.counters[f"ingest-refused:{err.reason}"] += 1
            if self.refused is not None:
                self.refused(payload, err)
            raise CoapBadRequest(f"{err.reason}: {err}") from err
        ack = await self.handler(envelope)
        if ack is None:
            return aiocoap.Message(code=aiocoap.CHANGED)
        return content(dumps(ack.to_body(), answer), answer, code=aiocoap.CHANGED)
