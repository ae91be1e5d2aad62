"""The `sim` driver: seeded synthetic signals with known ground truth and injectable anomalies.

Samples are produced on a fixed grid (``t0 + i / rate_hz`` on a monotonic clock), so the stream is
exact in rate however late the loop wakes up, and the same seed gives the same values. A stall longer
than `max_catch_up_s` skips ahead instead of emitting everything it missed at once; the skipped
samples are counted.
"""

from __future__ import annotations

import math

import numpy as np

from edgekernel.config.models import SimSignal

ANOMALY_LENGTH = 20
ANOMALY_GAIN = 6.0


class SimSource:
    def __init__(self, signal: SimSignal, rate_hz: float, t0: float, *, max_catch_up_s: float = 10.0) -> None:
        self.signal = signal
        self.rate_hz = rate_hz
        self.t0 = t0
        self.max_catch_up = max(1, math.ceil(max_catch_up_s * rate_hz))
        self.produced = 0
        self.skipped = 0
        self.anomalies = 0
        self._rng = np.random.default_rng(signal.seed)
        self._level = signal.offset
        self._anomaly_left = 0

    def due(self, now: float) -> int:
        """How many samples are due at `now` (same clock as t0) and not yet produced."""
        due = max(0, math.floor((now - self.t0) * self.rate_hz) + 1 - self.produced)
        if due > self.max_catch_up:
            self.skipped += due - self.max_catch_up
            self.produced += due - self.max_catch_up
            due = self.max_catch_up
        return due

    def take(self, count: int) -> list[tuple[float, float]]:
        """The next `count` samples as (time on t0's clock, value)."""
        if count <= 0:
            return []
        index = np.arange(self.produced, self.produced + count)
        times = self.t0 + index / self.rate_hz
        values = self._shape(times - self.t0) + self._rng.normal(0.0, self.signal.noise, count)
        values = self._inject_anomalies(values)
        self.produced += count
        return list(zip(times.tolist(), values.tolist(), strict=True))

    def _shape(self, t: np.ndarray) -> np.ndarray:
        s = self.signal
        phase = 2 * math.pi * s.frequency_hz * t
        if s.kind == "sine":
            return np.asarray(s.offset + s.amplitude * np.sin(phase))
        if s.kind == "vibration":
            harmonics = np.sin(phase) + 0.5 * np.sin(2 * phase + 0.3) + 0.25 * np.sin(3 * phase + 1.1)
            return np.asarray(s.offset + s.amplitude * harmonics)
        if s.kind == "temperature":
            daily = np.sin(2 * math.pi * t / 86_400.0)
            slow = np.sin(phase / 60.0)
            return np.asarray(s.offset + s.amplitude * (0.8 * daily + 0.2 * slow))
        steps = self._rng.normal(0.0, s.amplitude / 100.0, t.shape[0])
        walk = self._level + np.cumsum(steps)
        self._level = float(walk[-1])
        return np.asarray(walk)

    def _inject_anomalies(self, values: np.ndarray) -> np.ndarray:
        rate = self.signal.anomaly_rate
        if rate <= 0 and self._anomaly_left == 0:
            return values
        starts: np.ndarray = np.asarray(self._rng.random(values.shape[0]) < rate)
        gain = ANOMALY_GAIN * max(self.signal.amplitude, self.signal.noise, 1e-3)
        for i in range(values.shape[0]):
            if self._anomaly_left == 0 and starts[i]:
                self._anomaly_left = ANOMALY_LENGTH
                self.anomalies += 1
            if self._anomaly_left > 0:
                values[i] += gain * self._rng.standard_normal()
                self._anomaly_left -= 1
        return values
