"""Config of a device's durable outbox: its byte bound, what happens when it is full, how it commits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edgekernel.config.base import Model

OverflowPolicy = Literal["block", "drop-oldest", "drop-newest"]
MiB = 1 << 20


class OutboxConfig(Model):
    max_bytes: Annotated[int, Field(ge=4096, le=1 << 40)] = Field(
        64 * MiB, description="bound on the unacknowledged messages (payload and topic bytes)"
    )
    overflow: OverflowPolicy = Field(
        "block",
        description="when a message does not fit: block waits for acknowledgements to free room "
        "(up to block_timeout_s, then the put fails); drop-oldest deletes the oldest unacknowledged "
        "messages; drop-newest refuses the new message. Every drop is counted.",
    )
    block_timeout_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] | None = Field(
        10.0, description="block: how long a put waits for room before failing; null waits for ever"
    )
    max_batch: Annotated[int, Field(ge=1, le=65_536)] = Field(
        512, description="group commit: most messages (and acks) in one transaction"
    )
    max_delay_ms: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = Field(
        0.0,
        description="group commit: how long the writer waits after a message for others to join its "
        "transaction; 0 commits at once what gathered while the previous commit ran",
    )
    # FULL: the write-ahead log is fsynced at every commit, so a message whose put returned survives
    #   a power cut or a kernel panic as well as the process being killed.
    # NORMAL: the log is fsynced only at checkpoints; a message whose put returned survives the
    #   process being killed (SIGKILL, OOM), but the last commits can roll back when power fails.
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL survives a killed process only"
    )
    memory_bytes: Annotated[int, Field(ge=0, le=1 << 32)] = Field(
        4 * MiB,
        description="unsent messages kept in memory for the sender; beyond this they are read back "
        "from the file",
    )
    resend_after_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = Field(
        5.0,
        description="send the messages in flight again when no acknowledgement has come for this long "
        "since the last one (or since the first of them was sent), or when later messages were "
        "acknowledged and an earlier one, sent this long ago, was not (a broker that lost its sessions "
        "drops what it gets before the gateway is back)",
    )
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        512,
        description="most messages sent and not yet acknowledged: a backlog drains at the pace of the "
        "acknowledgements, and a resend repeats at most this many",
    )
