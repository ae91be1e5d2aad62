"""What the device says about itself on ``…/reported``, in ``device stats`` and on CoAP ``/health``:
summaries of its models, inference, outbox backlog and agents, built from the parts that hold them."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import JsonValue

from edgekernel.config.kernel import ModelSpec
from edgekernel.device.agents.host import AgentHost
from edgekernel.device.inference import Inference
from edgekernel.link import Outbox, OutboxError
from edgekernel.link.coap import Health
from edgekernel.protocol import AgentReport, BacklogSummary, InferenceSummary, ModelState


def model_states(specs: list[ModelSpec], inference: Inference) -> list[ModelState]:
    loaded = {info.name: info for info in inference.manager.stats().loaded if not info.draining}
    states = []
    for spec in specs:
        info = loaded.get(spec.name)
        states.append(
            ModelState(
                name=spec.name,
                version=info.version if info else spec.version,
                runtime=spec.runtime,
                device=info.device if info else "",
                loaded=info is not None,
            )
        )
    return states


def backlog(outbox: Outbox) -> BacklogSummary | None:
    try:
        stats = outbox.stats()
    except OutboxError:
        return None
    return BacklogSummary(
        pending=stats.pending,
        pending_bytes=stats.pending_bytes,
        oldest_age_s=round(max(0.0, stats.oldest_age_s), 3),
        dropped=stats.dropped_oldest + stats.dropped_newest,
        dead=stats.dead,
        disk_full=stats.disk_full,
    )


def inference_summary(inference: Inference) -> InferenceSummary:
    stats = inference.scheduler.stats()
    total = stats.total
    return InferenceSummary(
        completed=total.completed,
        failed=sum(total.failed.values()),
        rejected=sum(total.rejected.values()),
        queue_depth=stats.queue_depth,
        p95_ms=round(total.timing.turnaround.p95 * 1000, 3),
        mean_batch=round(stats.mean_batch, 3),
    )


def agent_reports(host: AgentHost) -> list[AgentReport]:
    usage = host.usage()
    return [
        AgentReport(
            name=status.name,
            agent=status.agent,
            isolation=status.isolation,
            state=status.state,
            since=round(status.since, 3),
            restarts=status.restarts,
            failures=status.failures,
            last_error=status.last_error,
            usage={key: value for key, value in usage.get(status.name, {}).items() if value},
        )
        for status in host.status()
    ]


def plain(value: object) -> JsonValue:
    """A dataclass dump as JSON values (seq ranges become lists of pairs)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    ranges = getattr(value, "ranges", None)
    return [list(r) for r in ranges] if ranges is not None else str(value)


def health(counters: Mapping[str, int], backlog: BacklogSummary | None, *, connected: bool) -> Health:
    """CoAP ``/health``: the kernel's counters, the backlog and whether the link is up."""
    values = {f"kernel.{key}": value for key, value in counters.items()}
    if backlog is not None:
        values["outbox.pending"] = backlog.pending
        values["outbox.dropped"] = backlog.dropped
    values["link.connected"] = int(connected)
    return Health(status="ok" if connected else "offline", counters=values)
