"""The demo's anomaly detection: false alarms and detections of its `vibration-watch` agent.

Each demo device's vibration sensor and `vibration-watch` settings come from `edgekernel demo`'s own
config (edgekernel/cli/demo.py). The sim driver makes the stream in simulated time (no waiting), and
each window goes through the pipeline's own preprocessing, the int8 model through the kernel's ONNX
runtime session, and the pipeline's hysteresis: what the agent would raise, window for window.

- false alarms: `raised` events per hour on the healthy machines (anomaly_rate 0), and on the faulty
  ones outside any fault;
- detection: of the faults the sim started, the share with a `raised` event within `--grace-s`.

Anchor (same run): the same model on the held-out test split of its training data (per window: the
share of anomalies scored at or above `on`, and of normal windows, the false-positive share).

    .venv/bin/python bench/bench_demo_detection.py [--hours 1] [--devices 5] [--grace-s 1]
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
from edgekernel.device.drivers.sim import SimSource
from edgekernel.device.models import runtime_for
from edgekernel.device.models.runtime import Session
from tools.datasets import split

CHUNK_S = 60.0
STEP = 64  # samples taken at a time: a fault's start is known to within this many


@dataclass
class Outcome:
    device: str
    faulty: bool
    hours: float
    windows: int
    faults: int
    detected: int
    raised: int
    false_alarms: int


def open_session(model: dict[str, Any]) -> Session:
    return runtime_for(model["runtime"]).open(Path(model["file"]), threads=1)


def watch_config(config: dict[str, Any]) -> PipelineConfig:
    watch = next(agent for agent in config["agents"] if agent["agent"] == "pipeline")
    return PipelineConfig.model_validate(watch["config"])


def run_device(index: int, session: Session, hours: float, grace_s: float) -> Outcome:
    config = device_config(index, Path("/nonexistent"))
    sensor = SensorConfig.model_validate(config["sensors"][0])
    pipe = watch_config(config)
    source = SimSource(sensor.sim, sensor.rate_hz, 0.0)
    rate = sensor.rate_hz
    grace = round(grace_s * rate)
    # the alarm's state and the sample indices of fault starts and raised events
    alarm = False
    fault_starts: list[int] = []
    raises: list[int] = []
    windows = 0
    carry = np.zeros(0)
    carried_from = 0  # sample index of carry[0]
    total = round(hours * 3600 * rate) // STEP * STEP
    chunk = round(CHUNK_S * rate)
    produced = 0
    while produced < total:
        parts = []
        for _ in range(min(chunk, total - produced) // STEP):
            before = source.anomalies
            parts.append([value for _, value in source.take(STEP)])
            if source.anomalies > before:  # a fault began in these STEP samples
                fault_starts.append(produced)
            produced += STEP
        values = np.array(parts).reshape(-1)
        stream = np.concatenate([carry, values])
        starts = range(0, len(stream) - pipe.window + 1, pipe.hop)
        if starts:
            batch = np.concatenate([features(stream[s : s + pipe.window], pipe) for s in starts])
            scores = session.run([batch])[0][:, pipe.score_index]
            for s, score in zip(starts, scores, strict=True):
                end = carried_from + s + pipe.window
                if (not alarm and score >= pipe.on) or (alarm and score <= pipe.off):  # as the agent
                    alarm = not alarm
                    if alarm:
                        raises.append(end)
            windows += len(starts)
            consumed = starts[-1] + pipe.hop
            carry = stream[consumed:]
            carried_from += consumed
        else:
            carry = stream
    detected = sum(any(f <= r <= f + grace + STEP for r in raises) for f in fault_starts)
    false_alarms = sum(not any(f <= r <= f + grace + STEP for f in fault_starts) for r in raises)
    return Outcome(
        config["device"],
        sensor.sim.anomaly_rate > 0,
        hours,
        windows,
        len(fault_starts),
        detected,
        len(raises),
        false_alarms,
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
    parser.add_argument("--grace-s", type=float, default=1.0)
    args = parser.parse_args()
    first = device_config(1, Path("/nonexistent"))
    session = open_session(first["kernel"]["models"][0])
    pipe = PipelineConfig.model_validate(
        next(a for a in first["agents"] if a["agent"] == "pipeline")["config"]
    )
    outcomes = [run_device(i, session, args.hours, args.grace_s) for i in range(1, args.devices + 1)]
    recall, fp_share = anchor(session, pipe)
    rows = [
        (
            o.device,
            "faulty" if o.faulty else "healthy",
            o.windows,
            o.faults,
            o.detected,
            o.raised,
            o.false_alarms,
            o.false_alarms / o.hours,
        )
        for o in outcomes
    ]
    table(
        f"vibration-watch over {args.hours:g} simulated hours a device (window {pipe.window}, hop "
        f"{pipe.hop}, on {pipe.on}, off {pipe.off})",
        ("device", "machine", "windows", "faults", "detected", "raised", "false alarms", "per hour"),
        rows,
    )
    faults = sum(o.faults for o in outcomes)
    detected = sum(o.detected for o in outcomes)
    healthy = [o for o in outcomes if not o.faulty]
    hours_healthy = sum(o.hours for o in healthy)
    figures = {
        "detection": detected / faults if faults else None,
        "false_alarms_per_hour_healthy": sum(o.false_alarms for o in healthy) / hours_healthy
        if hours_healthy
        else None,
        "false_alarms_per_hour_all": sum(o.false_alarms for o in outcomes) / sum(o.hours for o in outcomes),
        "anchor_window_recall": recall,
        "anchor_window_false_positive": fp_share,
    }
    table(
        "anchor: the model on held-out training-like windows",
        ("recall", "false positive"),
        [(recall, fp_share)],
    )
    finish("demo_detection", figures)


if __name__ == "__main__":
    main()
