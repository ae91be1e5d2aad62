"""The `sim` driver: seeded synthetic signals with known ground truth, anomalies and a plant.

Samples are produced on a fixed grid (``t0 + i / rate_hz`` on a monotonic clock), so the stream is
exact in rate however late the loop wakes up, and the same seed gives the same values. A stall longer
than `max_catch_up_s` skips ahead instead of emitting everything it missed at once; the skipped
samples are counted.

Anomalies start at random (`anomaly_rate`) or on command (`inject`): gaussian noise, or one of the
machine faults the vibration model learned (`faults`). The `plant` kind is a first-order thermal
model whose input, a fan duty from 0 to 1, is set with `actuate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from edgekernel.config.models import SimSignal
from edgekernel.device.drivers.base import Timed
from edgekernel.device.drivers.faults import TWO_PI, BearingFault, BurstFault, MisalignmentFault

ANOMALY_LENGTH = 20  # samples of a random noise anomaly
FAULT_S = 0.5  # seconds of a random machine fault
ANOMALY_GAIN = 6.0
KINDS: Final = ("noise", "bearing", "misalignment", "burst")
RATIO2, RATIO3 = 0.2, 0.08  # a healthy machine's 2x and 3x harmonics (the model's data: ≤ 0.35, ≤ 0.15)
PHASE2, PHASE3 = 0.3, 1.1
MAX_INJECT_S = 3600.0


@dataclass(slots=True)
class _Episode:
    kind: str
    first: int  # the sample it starts at
    left: int  # samples still to go
    severity: float
    fault: BearingFault | MisalignmentFault | BurstFault | None = None


class SimSource:
    Config = SimSignal
    wall_times = False

    def __init__(self, signal: SimSignal, rate_hz: float, t0: float, *, max_catch_up_s: float = 10.0) -> None:
        self.signal = signal
        self.rate_hz = rate_hz
        self.t0 = t0
        self.max_catch_up = max(1, math.ceil(max_catch_up_s * rate_hz))
        self.produced = 0
        self.skipped = 0
        self.anomalies = 0
        self.injected = 0
        self._rng = np.random.default_rng(signal.seed)
        self._level = signal.offset
        self._episode: _Episode | None = None
        self._pending: tuple[str, float] | None = None
        plant = signal.plant
        self.duty = plant.initial_duty
        self._temperature = self._settles_at()

    async def run(self) -> None:
        return None

    def due(self, now: float) -> int:
        """How many samples are due at `now` (same clock as t0) and not yet produced."""
        due = max(0, math.floor((now - self.t0) * self.rate_hz) + 1 - self.produced)
        if due > self.max_catch_up:
            self.skipped += due - self.max_catch_up
            self.produced += due - self.max_catch_up
            due = self.max_catch_up
        return due

    def take(self, count: int) -> list[Timed]:
        """The next `count` samples as (time on t0's clock, value)."""
        if count <= 0:
            return []
        index = np.arange(self.produced, self.produced + count)
        times = self.t0 + index / self.rate_hz
        values = self._shape(times - self.t0) + self._rng.normal(0.0, self.signal.noise, count)
        values = self._add_anomalies(index, values)
        self.produced += count
        return list(zip(times.tolist(), values.tolist(), strict=True))

    def inject(self, kind: str, duration_s: float) -> None:
        """An anomaly of `kind` from the next sample on, for `duration_s`."""
        if kind not in KINDS:
            raise ValueError(f"anomaly kind {kind!r} is not one of {', '.join(KINDS)}")
        if not (math.isfinite(duration_s) and 0 < duration_s <= MAX_INJECT_S):
            raise ValueError(f"duration_s must be above 0 and at most {MAX_INJECT_S:g}, got {duration_s!r}")
        self._pending = (kind, duration_s)

    def actuate(self, value: float) -> None:
        """The plant's fan duty, 0 to 1."""
        if self.signal.kind != "plant":
            raise ValueError(f"a {self.signal.kind} signal takes no input (only kind plant does)")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"the fan duty must be between 0 and 1, got {value!r}")
        self.duty = float(value)

    def _settles_at(self) -> float:
        plant = self.signal.plant
        return plant.ambient_c + plant.heat_rise_c - plant.cooling_c * self.duty

    def _shape(self, t: np.ndarray) -> np.ndarray:
        s = self.signal
        phase = TWO_PI * s.frequency_hz * t
        if s.kind == "sine":
            return np.asarray(s.offset + s.amplitude * np.sin(phase))
        if s.kind == "vibration":
            harmonics = (
                np.sin(phase) + RATIO2 * np.sin(2 * phase + PHASE2) + RATIO3 * np.sin(3 * phase + PHASE3)
            )
            return np.asarray(s.offset + s.amplitude * harmonics)
        if s.kind == "temperature":
            daily = np.sin(TWO_PI * t / 86_400.0)
            slow = np.sin(phase / 60.0)
            return np.asarray(s.offset + s.amplitude * (0.8 * daily + 0.2 * slow))
        if s.kind == "plant":
            return self._plant(t.shape[0])
        steps = self._rng.normal(0.0, s.amplitude / 100.0, t.shape[0])
        walk = self._level + np.cumsum(steps)
        self._level = float(walk[-1])
        return np.asarray(walk)

    def _plant(self, count: int) -> np.ndarray:
        """The temperature moves towards where the duty settles it, by the first-order step per sample."""
        step = 1.0 - math.exp(-1.0 / (self.rate_hz * self.signal.plant.time_constant_s))
        target = self._settles_at()
        out = np.empty(count)
        for i in range(count):
            self._temperature += (target - self._temperature) * step
            out[i] = self._temperature
        return out

    def _add_anomalies(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self._pending is not None:
            kind, duration_s = self._pending
            self._pending = None
            self.injected += 1
            self._episode = self._begin(kind, int(index[0]), max(1, math.ceil(duration_s * self.rate_hz)))
        rate = self.signal.anomaly_rate
        i, count = 0, values.shape[0]
        while i < count:
            if self._episode is None:
                if rate <= 0:
                    break
                hits = np.flatnonzero(self._rng.random(count - i) < rate)
                if hits.size == 0:
                    break
                i += int(hits[0])
                kind = self.signal.anomaly_kind
                length = ANOMALY_LENGTH if kind == "noise" else max(1, math.ceil(FAULT_S * self.rate_hz))
                self._episode = self._begin(kind, int(index[i]), length)
            episode = self._episode
            end = min(count, i + episode.left)
            values[i:end] += self._fault(episode, index[i:end])
            episode.left -= end - i
            if episode.left == 0:
                self._episode = None
            i = end
        return values

    def _begin(self, kind: str, first: int, length: int) -> _Episode:
        self.anomalies += 1
        severity = float(self._rng.uniform(0.3, 1.0))
        column = np.array([[self.signal.amplitude or 1.0]])
        level = np.array([[severity]])
        fault: BearingFault | MisalignmentFault | BurstFault | None = None
        if kind == "bearing":
            f0 = np.array([[self.signal.frequency_hz]])
            fault = BearingFault.draw(self._rng, f0, column, level)
        elif kind == "misalignment":
            fault = MisalignmentFault.draw(self._rng, column, level)
        elif kind == "burst":
            fault = BurstFault(np.zeros((1, 1)), np.array([[float(length)]]), column * (0.3 + 0.9 * level))
        return _Episode(kind, first, length, severity, fault)

    def _fault(self, episode: _Episode, index: np.ndarray) -> np.ndarray:
        row = index.astype(np.float64)[None, :]
        fault = episode.fault
        if isinstance(fault, BearingFault):
            return np.asarray(fault.wave((row - episode.first) / self.rate_hz)[0])
        if isinstance(fault, MisalignmentFault):
            phase = TWO_PI * self.signal.frequency_hz * row / self.rate_hz
            zero = np.zeros((1, 1))
            return np.asarray(fault.wave(phase, np.array([[RATIO2]]), np.array([[PHASE2]]), zero)[0])
        if isinstance(fault, BurstFault):
            return np.asarray(fault.wave(self._rng, row - episode.first)[0])
        gain = ANOMALY_GAIN * max(self.signal.amplitude, self.signal.noise, 1e-3)
        return np.asarray(gain * self._rng.standard_normal(index.shape[0]))
