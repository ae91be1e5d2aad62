"""The gateway: ingest from the fleet, validation, deduplication and the SQLite store."""

from edgekernel.gateway.ingest import Gateway
from edgekernel.gateway.store import DeviceSummary, Store, StoreError, read_summary

__all__ = ["DeviceSummary", "Gateway", "Store", "StoreError", "read_summary"]
