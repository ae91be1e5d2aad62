"""The demo's anomaly detection: false alarms and detections of its `vibration-watch` agent.

Each demo device's vibration sensor and `vibration-watch` settings come from `edgekernel demo`'s own
config (edgekernel/cli/demo.py). The sim driver makes the stream in simulated time (no waiting), and
each window goes through the pipeline's own preprocessing, the int8 model through the kernel's ONNX
runtime session, and the pipeline's hysteresis: what the agent would raise, window for window.

- false alarms: `raised` events per hour on the healthy machines (anomaly_rate 0), and on the faulty
  ones outside any fault;
- detection: of the faults the sim started, the share with a `raised` event within `--grace-s`;
- per window: of the windows wholly inside a fault, the share scored at or above `on`; of those clear
  of any fault, the same (the model's false positives on this machine).

Anchor (same run): the same model on the held-out test split of its training data (per window: the
share of anomalies scored at or above `on`, and of normal windows, the false-positive share).

    .venv/bin/python bench/bench_demo_detection.py [--hours 1] [--devices 5] [--grace-s 1] [--noise G]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import finish, table

from edgekernel.cli.demo import device_config
from edgekernel.config.models import SensorConfig
from edgekernel.device.agents.builtin.pipeline import PipelineConfig, features
from edgekernel.device.drivers.sim import FAULT_S, SimSource
from edgekernel.device.models import runtime_for
from edgekernel.device.models.runtime import Session
from tools.datasets import split

CHUNK_S = 60.0
STEP = 64  # samples taken at a time: a fault's start is known to within this many


@dataclass
class Outcome:
    device: str
    faulty: bool
    kind: str
    hours: float
    windows: int
    faults: int
    detected: int
    raised: int
    false_alarms: int
    fault_windows: int  # windows wholly inside a fault
    fault_windows_hit: int  # of those, scored at or above `on`
    clear_windows: int  # windows clear of every fault
    clear_windows_hit: int


def open_session(model: dict[str, Any]) -> Session:
    return runtime_for(model["runtime"]).open(Path(model["file"]), threads=1)


def watch_config(config: dict[str, Any]) -> PipelineConfig:
    watch = next(agent for agent in config["agents"] if agent["agent"] == "pipeline")
    return PipelineConfig.model_validate(watch["config"])


def score_stream(
    source: SimSource, pipe: PipelineConfig, session: Session, total: int
) -> tuple[list[int], list[int], list[float]]:
    """`total` samples of `source` through the pipeline's windows and the model: the sample indices
    where faults began (to within STEP), and each window's end and score."""
    rate = source.rate_hz
    fault_starts: list[int] = []
    ends: list[int] = []
    scores: list[float] = []
    carry = np.zeros(0)
    carried_from = 0  # sample index of carry[0]
    produced = 0
    while produced < total:
        parts = []
        for _ in range(min(round(CHUNK_S * rate), total - produced) // STEP):
            before = source.anomalies
            parts.append([value for _, value in source.take(STEP)])
            if source.anomalies > before:  # a fault began in these STEP samples
                fault_starts.append(produced)
            produced += STEP
        stream = np.concatenate([carry, np.array(parts).reshape(-1)])
        starts = range(0, len(stream) - pipe.window + 1, pipe.hop)
        if starts:
            batch = np.concatenate([features(stream[s : s + pipe.window], pipe) for s in starts])
            scores.extend(session.run([batch])[0][:, pipe.score_index].tolist())
            ends.extend(carried_from + s + pipe.window for s in starts)
            consumed = starts[-1] + pipe.hop
            carry = stream[consumed:]
            carried_from += consumed
        else:
            carry = stream
    return fault_starts, ends, scores


def run_device(index: int, session: Session, hours: float, grace_s: float, noise: float | None) -> Outcome:
    config = device_config(index, Path("/nonexistent"))
    sensor = SensorConfig.model_validate(config["sensors"][0])
    assert sensor.sim is not None
    signal = sensor.sim if noise is None else sensor.sim.model_copy(update={"noise": noise})
    pipe = watch_config(config)
    source = SimSource(signal, sensor.rate_hz, 0.0)
    rate = sensor.rate_hz
    fault_starts, ends, scores = score_stream(
        source, pipe, session, round(hours * 3600 * rate) // STEP * STEP
    )
    raises = []
    alarm = False
    for end, score in zip(ends, scores, strict=True):
        if (not alarm and score >= pipe.on) or (alarm and score <= pipe.off):  # as the agent does
            alarm = not alarm
            if alarm:
                raises.append(end)
    grace = round(grace_s * rate) + STEP
    length = round(FAULT_S * rate)
    faults = np.array(fault_starts)
    end_at = np.array(ends)
    # a window wholly inside a fault, or wholly clear of every fault
    nearest = np.searchsorted(faults, end_at, side="right") - 1
    since = np.where(nearest >= 0, end_at - faults[np.maximum(nearest, 0)], np.inf) if faults.size else None
    score_at = np.array(scores)
    if since is None:
        in_fault = np.zeros(end_at.shape, dtype=bool)
        clear = np.ones(end_at.shape, dtype=bool)
    else:
        in_fault = (since >= pipe.window + STEP) & (since <= length)
        clear = since > length + pipe.window + STEP
    return Outcome(
        config["device"],
        signal.anomaly_rate > 0,
        signal.anomaly_kind,
        hours,
        len(ends),
        len(fault_starts),
        sum(any(f <= r <= f + grace for r in raises) for f in fault_starts),
        len(raises),
        sum(not any(f <= r <= f + grace for f in fault_starts) for r in raises),
        int(in_fault.sum()),
        int((score_at[in_fault] >= pipe.on).sum()),
        int(clear.sum()),
        int((score_at[clear] >= pipe.on).sum()),
    )


def anchor(session: Session, pipe: PipelineConfig) -> tuple[float, float]:
    """(recall, false-positive share) per window on the held-out test split, at the threshold `on`."""
    x, y = split("vibration", "test")
    scores = session.run([x])[0][:, pipe.score_index]
    return float(np.mean(scores[y == 1] >= pipe.on)), float(np.mean(scores[y == 0] >= pipe.on))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours per device")
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--grace-s", type=float, default=1.0, help="a raise this soon after a fault start")
    parser.add_argument("--noise", type=float, default=None, help="sensor noise in g instead of the demo's")
    args = parser.parse_args()
    first = device_config(1, Path("/nonexistent"))
    session = open_session(first["kernel"]["models"][0])
    pipe = watch_config(first)
    outcomes = [
        run_device(i, session, args.hours, args.grace_s, args.noise) for i in range(1, args.devices + 1)
    ]
    recall, fp_share = anchor(session, pipe)
    rows = [
        (
            o.device,
            o.kind if o.faulty else "healthy",
            o.windows,
            o.faults,
            o.detected,
            o.raised,
            o.false_alarms,
            f"{o.fault_windows_hit}/{o.fault_windows}",
            f"{o.clear_windows_hit}/{o.clear_windows}",
        )
        for o in outcomes
    ]
    table(
        f"vibration-watch over {args.hours:g} simulated hours a device (window {pipe.window}, hop "
        f"{pipe.hop}, on {pipe.on}, off {pipe.off}"
        + (f", noise {args.noise:g} g" if args.noise is not None else "")
        + ")",
        (
            "device",
            "machine",
            "windows",
            "faults",
            "detected",
            "raised",
            "false alarms",
            "in fault ≥ on",
            "clear ≥ on",
        ),
        rows,
    )
    title = "anchor: the model per window on held-out windows like its training data, at on"
    table(title, ("recall", "false positive"), [(recall, fp_share)])
    faults = sum(o.faults for o in outcomes)
    healthy_hours = sum(o.hours for o in outcomes if not o.faulty)
    fault_windows = sum(o.fault_windows for o in outcomes)
    clear_windows = sum(o.clear_windows for o in outcomes)
    finish(
        "demo_detection",
        {
            "hours_per_device": args.hours,
            "noise": args.noise,
            "faults": faults,
            "detection": sum(o.detected for o in outcomes) / faults if faults else None,
            "false_alarms": sum(o.false_alarms for o in outcomes),
            "false_alarms_per_hour_healthy": (
                sum(o.false_alarms for o in outcomes if not o.faulty) / healthy_hours
                if healthy_hours
                else None
            ),
            "false_alarms_per_device_hour": sum(o.false_alarms for o in outcomes)
            / sum(o.hours for o in outcomes),
            "window_recall_in_faults": sum(o.fault_windows_hit for o in outcomes) / fault_windows
            if fault_windows
            else None,
            "window_false_positive": sum(o.clear_windows_hit for o in outcomes) / clear_windows,
            "anchor_window_recall": recall,
            "anchor_window_false_positive": fp_share,
        },
    )


if __name__ == "__main__":
    main()
