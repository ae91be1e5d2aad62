"""Bounds on the seqs a device may use, so a forged or broken seq cannot open an absurd gap."""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgekernel.gateway.store import StoreError
from edgekernel.protocol import ProtocolError

log = logging.getLogger(__name__)


class SeqGuard:
    """Refuses a seq too far above the highest of its seq space: `max_jump`, plus `max_rate` per second
    since that one came (a drop-oldest outbox goes on counting while it is offline). A new space starts
    at 1, so its first seq may be at most `max_jump`."""

    def __init__(
        self, highest: Callable[[str, int], tuple[int, float] | None], *, max_jump: int, max_rate: float
    ) -> None:
        self._lookup = highest
        self.max_jump = max_jump
        self.max_rate = max_rate
        self._highest: dict[tuple[str, int], tuple[int, float]] = {}  # (device, epoch) -> (seq, when)

    def check(self, device: str, epoch: int, seq: int, now: float) -> None:
        key = (device, epoch)
        known = self._highest.get(key)
        if known is None:
            try:
                known = self._lookup(device, epoch) or (0, now)
            except StoreError as err:
                log.warning("cannot look up the highest seq of %s: %s", device, err)
                known = (0, now)
        top, at = known
        limit = top + self.max_jump + int(self.max_rate * max(0.0, now - at))
        if seq > limit:
            self._highest[key] = known
            raise ProtocolError(
                "seq-jump",
                f"seq {seq} of seq space {epoch} is more than {limit - top} above the highest seen ({top})",
            )
        self._highest[key] = (seq, now) if seq > top else known
