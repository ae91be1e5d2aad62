"""Machine faults as they show in a vibration signal, vectorised over rows of parameters.

Each fault is drawn once (`draw`, its random parameters as ``(n, 1)`` columns) and then evaluated at
sample times (`wave`, rows of times broadcast against the columns). The seeded training data of the
project's vibration model and the `sim` driver's injected anomalies use the same generators, so an
injected fault looks like one the model learned. Pure NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
TWO_PI = 2.0 * math.pi


def uniform(rng: np.random.Generator, low: float, high: float, n: int) -> Floats:
    """`n` draws as a column, ready to broadcast against a row of sample times."""
    return rng.uniform(low, high, (n, 1))


@dataclass(frozen=True, slots=True)
class BearingFault:
    """A defect struck once per pass: decaying resonance impulses at a bearing fault frequency
    (3–5.5× shaft speed), their height varying with the shaft angle (the load zone)."""

    f0: Floats
    height: Floats
    period: Floats
    offset: Floats
    resonance: Floats
    decay: Floats

    @classmethod
    def draw(cls, rng: np.random.Generator, f0: Floats, amp: Floats, severity: Floats) -> BearingFault:
        n = f0.shape[0]
        period = 1.0 / (f0 * uniform(rng, 3.0, 5.5, n))
        offset = uniform(rng, 0.0, 1.0, n) * period
        resonance = uniform(rng, 150.0, 400.0, n)
        decay = uniform(rng, 0.002, 0.005, n)
        return cls(f0, amp * (0.35 + 1.0 * severity), period, offset, resonance, decay)

    def wave(self, t: Floats) -> Floats:
        since = np.mod(t - self.offset, self.period)  # time since the last impact
        modulation = 1.0 + 0.3 * np.sin(TWO_PI * self.f0 * t)
        wave: Floats = (
            self.height * modulation * np.exp(-since / self.decay) * np.sin(TWO_PI * self.resonance * since)
        )
        return wave


@dataclass(frozen=True, slots=True)
class MisalignmentFault:
    """Misalignment and looseness: the 2x harmonic grows to 0.45–1.1 of 1x (healthy: at most 0.35),
    and half the machines also show a 1/2x sub-harmonic."""

    amp: Floats
    second: Floats
    sub_level: Floats

    @classmethod
    def draw(cls, rng: np.random.Generator, amp: Floats, severity: Floats) -> MisalignmentFault:
        n = amp.shape[0]
        second = 0.45 + 0.65 * severity
        sub = rng.uniform(0.0, 1.0, (n, 1)) < 0.5
        sub_level = sub * uniform(rng, 0.1, 0.3, n) * (0.5 + severity)
        return cls(amp, second, sub_level)

    def wave(self, shaft_phase: Floats, ratio2: Floats, phase2: Floats, phase_sub: Floats) -> Floats:
        """What the fault adds to a machine whose healthy 2x harmonic is `ratio2` of 1x at `phase2`."""
        wave: Floats = self.amp * (
            (self.second - ratio2) * np.sin(2.0 * shaft_phase + phase2)
            + self.sub_level * np.sin(0.5 * shaft_phase + phase_sub)
        )
        return wave


@dataclass(frozen=True, slots=True)
class BurstFault:
    """Rubbing or a cracked part: a burst of broadband noise under a sin² envelope, `length` samples
    from sample `start`."""

    start: Floats
    length: Floats
    level: Floats

    @classmethod
    def draw(cls, rng: np.random.Generator, window: int, amp: Floats, severity: Floats) -> BurstFault:
        n = amp.shape[0]
        length = np.floor(uniform(rng, 0.08, 0.3, n) * window)
        start = np.floor(uniform(rng, 0.0, 1.0, n) * (window - length))
        return cls(start, length, amp * (0.3 + 0.9 * severity))

    def wave(self, rng: np.random.Generator, index: Floats) -> Floats:
        """At sample numbers `index` (a row), with fresh noise from `rng`."""
        inside = (index >= self.start) & (index < self.start + self.length)
        envelope = inside * np.sin(math.pi * np.clip((index - self.start) / self.length, 0.0, 1.0)) ** 2
        burst: Floats = self.level * envelope * rng.standard_normal((self.level.shape[0], index.shape[1]))
        return burst
