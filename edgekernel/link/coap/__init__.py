"""CoAP for devices and gateways (aiocoap, over UDP): serve resources, post envelopes, observe streams.

A device serves ``/.well-known/core``, ``/health``, observable ``/telemetry/{stream}`` and
``POST /infer/{model}``; a gateway serves ``POST /ingest``, which answers with the seq ranges it has
stored, the same acknowledgement a device gets on ``…/ack`` over MQTT. Bodies are JSON (Content-Format
50) or CBOR (60); large ones go block-wise. Errors:

    LinkError
    └── CoapError            an error response (.code, .diagnostic, .max_age) or none at all (.code None)
        ├── CoapBadRequest   4.00
        ├── CoapNotFound     4.04
        └── CoapUnavailable  5.03, retry after .max_age seconds

A handler raises them to refuse a request, and a client raises them on receiving one.
"""

from edgekernel.link.coap.client import CoapClient, CoapResponse, Observation
from edgekernel.link.coap.errors import CoapBadRequest, CoapNotFound, CoapUnavailable
from edgekernel.link.coap.formats import CONTENT_FORMATS
from edgekernel.link.coap.infer import FloatArray, InferHandler, parse_inputs
from edgekernel.link.coap.ingest import IngestHandler, check_ingest
from edgekernel.link.coap.resources import Health, HealthProvider
from edgekernel.link.coap.server import CoapServer
from edgekernel.link.coap.uplink import CoapUplink
from edgekernel.link.errors import CoapError

__all__ = [
    "CONTENT_FORMATS",
    "CoapBadRequest",
    "CoapClient",
    "CoapError",
    "CoapNotFound",
    "CoapResponse",
    "CoapServer",
    "CoapUnavailable",
    "CoapUplink",
    "FloatArray",
    "Health",
    "HealthProvider",
    "InferHandler",
    "IngestHandler",
    "Observation",
    "check_ingest",
    "parse_inputs",
]
