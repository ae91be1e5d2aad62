"""The gateway: ingest from the fleet, validation, deduplication and the SQLite store."""

from edgekernel.gateway.ingest import Gateway
from edgekernel.gateway.store import Store, StoreError

__all__ = ["Gateway", "Store", "StoreError"]
