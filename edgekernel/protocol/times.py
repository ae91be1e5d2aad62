"""Bounds on the times a device writes: an envelope's ``ts`` and its samples' must lie between
2000-01-01 and the receiver's clock plus an allowed skew. A clock that never synchronized (1970 on a
box without a real-time clock) or a forged time is refused with reason ``bad-ts``, not stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

from edgekernel.protocol.envelope import Envelope
from edgekernel.protocol.errors import ProtocolError

EARLIEST_TS: Final = 946_684_800.0  # 2000-01-01T00:00:00Z
DEFAULT_SKEW_S: Final = 600.0


def check_times(
    envelope: Envelope, samples: Iterable[float] = (), *, now: float, skew_s: float = DEFAULT_SKEW_S
) -> None:
    """Raise `ProtocolError` ("bad-ts") naming the first time outside [2000-01-01, now + skew_s]."""
    latest = now + skew_s
    if not EARLIEST_TS <= envelope.ts <= latest:
        raise ProtocolError("bad-ts", f"envelope ts {envelope.ts!r} {_where(envelope.ts, now, skew_s)}")
    for index, ts in enumerate(samples):
        if not EARLIEST_TS <= ts <= latest:
            raise ProtocolError("bad-ts", f"sample {index} ts {ts!r} {_where(ts, now, skew_s)}")


def _where(ts: float, now: float, skew_s: float) -> str:
    if ts < EARLIEST_TS:
        return f"is before 2000-01-01 ({time.strftime('%Y-%m-%d', time.gmtime(max(ts, 0.0)))})"
    return f"is {ts - now:.6g} s ahead of the receiver's clock (allowed skew {skew_s:g} s)"
