"""Seeded synthetic sensor datasets with known ground truth, for the models the project builds itself.

Only tests, tools and benchmarks use them, so they live outside the installed package; the machine
faults come from the `sim` driver (`edgekernel/device/drivers/faults.py`), so the model learns the
faults the simulator injects. Pure NumPy. Each generator draws
from its own `numpy.random.default_rng(seed)`: the same seed gives the same arrays (bit for bit on
one machine; across machines up to the last bit of libm's `sin`/`exp`, which the float32 cast hides
almost always).

Two datasets, each a window of samples in channels-last layout ``[n, window, channels]``:

``vibration``  (`vibration_windows`) one accelerometer on a rotating machine, 1 kHz, 128 samples.
    Normal: a shaft frequency of 20–60 Hz with its 2nd and 3rd harmonics, random phases and
    amplitudes, a little speed drift and sensor noise. Anomaly (label 1), one of three faults at a
    random severity: a bearing defect (a train of decaying resonance impulses at 3–5.5× shaft speed),
    misalignment/looseness (the 2× harmonic at 0.45–1.1 of 1×, where a healthy machine stays under
    0.35, and a ½× sub-harmonic on half the machines), or a broadband burst (rubbing). The weakest
    faults hide in the noise: the project's small CNN scores about 97 %, not 100 %.

``gesture``  (`gesture_windows`) a 3-axis wrist accelerometer in g, 50 Hz, 64 samples (1.28 s), five
    classes: idle, shake, circle, tap, swipe; each with random orientation, speed, amplitude,
    timing and noise (a swipe may be cut by the window's edge). The small CNN scores about 99 %.

Models built on them (``tools/build_models.py``, files in ``models/``) share one interface:

    input   ``signal``  float32 ``[batch, window, channels]`` (vibration ``[batch, 128, 1]``,
                        gesture ``[batch, 64, 3]``), raw units (g), no normalisation needed
    output  ``probs``   float32 ``[batch, classes]``, softmax probabilities in `DatasetInfo.classes`
                        order; the prediction is the argmax

The int8 LiteRT files have int8 input and output tensors; their scale and zero point are in the
manifest, and the kernel's runtime quantizes and dequantizes for the caller.

Train, calibration and test data come from different seeds (`SPLIT_SEEDS`), so held-out windows are
never seen in training: use `split`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

try:
    from edgekernel.device.drivers import faults
except ImportError:  # tools/build_models.py's venv has numpy only: it loads faults.py by path first
    faults = sys.modules["edgekernel_faults"]

__all__ = [
    "DATASETS",
    "SPLIT_SEEDS",
    "SPLIT_SIZES",
    "DatasetInfo",
    "SplitName",
    "gesture_windows",
    "split",
    "vibration_windows",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]
SplitName = Literal["train", "calibration", "test"]


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a dataset's windows are and what a model built on it takes and gives."""

    name: str
    classes: tuple[str, ...]
    window: int
    channels: int
    sample_rate_hz: float
    input_name: str = "signal"
    output_name: str = "probs"

    @property
    def input_shape(self) -> tuple[int | None, int, int]:
        """The model input shape; ``None`` is the batch dimension."""
        return (None, self.window, self.channels)

    @property
    def output_shape(self) -> tuple[int | None, int]:
        return (None, len(self.classes))


_VIBRATION_RATE_HZ: Final = 1000.0
_GESTURE_RATE_HZ: Final = 50.0
_GESTURE_CLASSES: Final = ("idle", "shake", "circle", "tap", "swipe")

DATASETS: Final[dict[str, DatasetInfo]] = {
    "vibration": DatasetInfo("vibration", ("normal", "anomaly"), 128, 1, _VIBRATION_RATE_HZ),
    "gesture": DatasetInfo("gesture", _GESTURE_CLASSES, 64, 3, _GESTURE_RATE_HZ),
}

# Each split has its own seed, so held-out windows are never drawn by the training generator.
SPLIT_SEEDS: Final[dict[SplitName, int]] = {"train": 1_001, "calibration": 2_002, "test": 3_003}
SPLIT_SIZES: Final[dict[SplitName, int]] = {"train": 12_000, "calibration": 512, "test": 2_000}

_TWO_PI: Final = 2.0 * math.pi


def split(dataset: str, part: SplitName, *, n: int | None = None) -> tuple[FloatArray, LabelArray]:
    """The `part` split of `dataset` (``vibration`` or ``gesture``): its seed, its default size.

    `n` overrides the size; the windows then differ from the default-size ones (the draws are
    vectorised), but stay disjoint from the other splits.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    if part not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {part!r}; expected one of {sorted(SPLIT_SEEDS)}")
    count = SPLIT_SIZES[part] if n is None else n
    seed = SPLIT_SEEDS[part]
    if dataset == "vibration":
        return vibration_windows(count, seed=seed)
    return gesture_windows(count, seed=seed)


def _balanced_labels(rng: np.random.Generator, n: int, counts: list[int]) -> LabelArray:
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return rng.permutation(labels)


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> npt.NDArray[np.float64]:
    """`n` draws as a column, ready to broadcast against a row of sample times."""
    return rng.uniform(low, high, (n, 1))


def _check_sizes(n: int, window: int, channels: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if window < 8:
        raise ValueError(f"window must be >= 8 samples, got {window}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")


def vibration_windows(
    n: int,
    *,
    seed: int,
    window: int = 128,
    channels: int = 1,
    anomaly_fraction: float = 0.5,
) -> tuple[FloatArray, LabelArray]:
    """`n` windows of machine vibration in g, ``[n, window, channels]`` float32, and labels.

    Labels: 0 normal, 1 anomaly; exactly ``round(n * anomaly_fraction)`` anomalies, shuffled. With
    several channels, each is the same machine seen by a sensor of its own gain and noise.
    """
    _check_sizes(n, window, channels)
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
    rng = np.random.default_rng(seed)
    anomalies = round(n * anomaly_fraction)
    y = _balanced_labels(rng, n, [n - anomalies, anomalies])
    t = np.arange(window, dtype=np.float64)[None, :] / _VIBRATION_RATE_HZ

    # Healthy machine: shaft speed with a slow drift, 1x/2x/3x harmonics, random phases.
    f0 = _uniform(rng, 20.0, 60.0, n)
    drift = _uniform(rng, -0.02, 0.02, n)  # relative speed change over the window
    shaft_phase = _TWO_PI * f0 * (t + 0.5 * drift * t * t * _VIBRATION_RATE_HZ / window)
    phases = rng.uniform(0.0, _TWO_PI, (n, 4))
    amp = _uniform(rng, 0.5, 1.5, n)
    ratio2 = _uniform(rng, 0.05, 0.35, n)
    ratio3 = _uniform(rng, 0.02, 0.15, n)
    signal = amp * (
        np.sin(shaft_phase + phases[:, :1])
        + ratio2 * np.sin(2.0 * shaft_phase + phases[:, 1:2])
        + ratio3 * np.sin(3.0 * shaft_phase + phases[:, 2:3])
    )

    # Faults, drawn for every window and added where the label says anomaly.
    kind = rng.integers(0, 3, n)
    severity = _uniform(rng, 0.0, 1.0, n)
    bearing = faults.BearingFault.draw(rng, f0, amp, severity).wave(t)
    misaligned = faults.MisalignmentFault.draw(rng, amp, severity).wave(
        shaft_phase, ratio2, phases[:, 1:2], phases[:, 3:4]
    )
    index = np.arange(window, dtype=np.float64)[None, :]
    burst = faults.BurstFault.draw(rng, window, amp, severity).wave(rng, index)
    fault = np.select([kind[:, None] == 0, kind[:, None] == 1], [bearing, misaligned], burst)
    signal += (y == 1)[:, None] * fault

    noise_level = _uniform(rng, 0.03, 0.12, n)
    gains = rng.uniform(0.6, 1.0, (n, 1, channels))
    gains[:, :, 0] = 1.0
    noise = rng.standard_normal((n, window, channels)) * noise_level[:, :, None]
    x = signal[:, :, None] * gains + noise
    return x.astype(np.float32), y


def gesture_windows(n: int, *, seed: int, window: int = 64) -> tuple[FloatArray, LabelArray]:
    """`n` windows of a 3-axis wrist accelerometer in g, ``[n, window, 3]`` float32, and labels.

    Labels index the classes idle, shake, circle, tap, swipe; balanced to within one window and
    shuffled. Gravity shows on the axis the wrist points down, tilted and turned at random; the motion
    is drawn in the wrist's frame and turned with it.
    """
    _check_sizes(n, window, 3)
    rng = np.random.default_rng(seed)
    k = len(_GESTURE_CLASSES)
    y = _balanced_labels(rng, n, [n // k + (1 if c < n % k else 0) for c in range(k)])
    t = np.arange(window, dtype=np.float64)[None, :] / _GESTURE_RATE_HZ

    # Every window has a faint physiological tremor; idle windows have nothing else.
    tremor = _uniform(rng, 0.005, 0.04, n) * np.sin(
        _TWO_PI * _uniform(rng, 6.0, 12.0, n) * t + _uniform(rng, 0.0, _TWO_PI, n)
    )
    motion = tremor[:, :, None] * _unit_vectors(rng, n)[:, None, :]
    motion += (y == 1)[:, None, None] * _shake(rng, t, n)
    motion += (y == 2)[:, None, None] * _circle(rng, t, n)
    motion += (y == 3)[:, None, None] * _taps(rng, t, n)
    motion += (y == 4)[:, None, None] * _swipe(rng, t, n)

    rotation = _random_rotations(rng, n, max_tilt=0.5)
    x = np.einsum("nij,ntj->nti", rotation, motion + np.array([0.0, 0.0, 1.0]))
    x += rng.uniform(-0.04, 0.04, (n, 1, 3))  # per-axis sensor bias
    x += rng.standard_normal((n, window, 3)) * _uniform(rng, 0.01, 0.06, n)[:, :, None]
    return x.astype(np.float32), y


def _unit_vectors(rng: np.random.Generator, n: int, *, flat: float = 1.0) -> npt.NDArray[np.float64]:
    """Random directions; `flat` < 1 squashes them towards the wrist's x-y plane."""
    v = rng.standard_normal((n, 3))
    v[:, 2] *= flat
    norm: npt.NDArray[np.float64] = np.linalg.norm(v, axis=1, keepdims=True)
    return v / norm


def _span(
    rng: np.random.Generator, t: npt.NDArray[np.float64], n: int, min_fraction: float
) -> npt.NDArray[np.float64]:
    """1 while the gesture lasts (at least `min_fraction` of the window), with soft 60 ms edges."""
    duration = t.shape[1] / _GESTURE_RATE_HZ
    length = _uniform(rng, min_fraction, 1.0, n) * duration
    start = _uniform(rng, 0.0, 1.0, n) * (duration - length)
    edge = 0.06
    rise = np.clip((t - start) / edge, 0.0, 1.0)
    fall = np.clip((start + length - t) / edge, 0.0, 1.0)
    span: npt.NDArray[np.float64] = rise * fall
    return span


def _shake(rng: np.random.Generator, t: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Back and forth along one direction, 3-8 Hz, for at least half the window."""
    freq = _uniform(rng, 3.0, 8.0, n)
    level = _uniform(rng, 0.25, 1.5, n) * _span(rng, t, n, 0.5)
    wave = level * np.sin(_TWO_PI * freq * t + _uniform(rng, 0.0, _TWO_PI, n))
    return wave[:, :, None] * _unit_vectors(rng, n, flat=0.4)[:, None, :]


def _circle(rng: np.random.Generator, t: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """The hand draws a circle in the wrist's plane, 0.7-1.8 turns a second, either way round."""
    freq = _uniform(rng, 0.7, 1.8, n)
    turn = np.where(rng.uniform(0.0, 1.0, (n, 1)) < 0.5, -1.0, 1.0)
    phase = turn * _TWO_PI * freq * t + _uniform(rng, 0.0, _TWO_PI, n)
    radius = _uniform(rng, 0.2, 0.8, n) * _span(rng, t, n, 0.75)
    squash = _uniform(rng, 0.6, 1.0, n)  # an ellipse as often as a circle
    motion = np.zeros((n, t.shape[1], 3))
    motion[:, :, 0] = radius * np.cos(phase)
    motion[:, :, 1] = radius * squash * np.sin(phase)
    return motion


def _taps(rng: np.random.Generator, t: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """One to three sharp knocks on the wrist: short pulses, mostly along z, with a little ringing."""
    count = rng.integers(1, 4, (n, 1))
    motion = np.zeros((n, t.shape[1], 3))
    step = 1.0 / _GESTURE_RATE_HZ
    duration = t.shape[1] * step
    for tap in range(3):
        at = _uniform(rng, 0.05, 0.95, n) * duration
        width = _uniform(rng, 0.6, 1.6, n) * step
        height = _uniform(rng, 0.6, 3.0, n) * (count > tap)
        direction = _unit_vectors(rng, n, flat=1.0)
        direction[:, 2] = np.abs(direction[:, 2]) + 2.0
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        since = t - at
        pulse = height * np.exp(-0.5 * (since / width) ** 2)
        ring = 0.3 * height * (since > 0) * np.exp(-since / (3 * step)) * np.sin(_TWO_PI * 12.0 * since)
        motion += (pulse - ring)[:, :, None] * direction[:, None, :]
    return motion


def _swipe(rng: np.random.Generator, t: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """One quick move in the wrist's plane: speed up, then slow down (one sine period of accel)."""
    length = _uniform(rng, 0.25, 0.7, n)
    duration = t.shape[1] / _GESTURE_RATE_HZ
    start = _uniform(rng, -0.25, 1.0, n) * (duration - 0.75 * length)  # sometimes cut by the window
    phase = np.clip((t - start) / length, 0.0, 1.0)
    wave = _uniform(rng, 0.4, 1.5, n) * np.sin(_TWO_PI * phase)
    swipe: npt.NDArray[np.float64] = wave[:, :, None] * _unit_vectors(rng, n, flat=0.2)[:, None, :]
    return swipe


def _random_rotations(rng: np.random.Generator, n: int, *, max_tilt: float) -> npt.NDArray[np.float64]:
    """Turn about z by any angle, then tilt by up to `max_tilt` radians about a random level axis."""
    yaw = rng.uniform(0.0, _TWO_PI, n)
    tilt = rng.uniform(0.0, max_tilt, n)
    azimuth = rng.uniform(0.0, _TWO_PI, n)
    cy, sy = np.cos(yaw), np.sin(yaw)
    turn = np.zeros((n, 3, 3))
    turn[:, 0, 0], turn[:, 0, 1], turn[:, 1, 0], turn[:, 1, 1], turn[:, 2, 2] = cy, -sy, sy, cy, 1.0
    # Rodrigues: rotation by `tilt` about the unit axis (cos azimuth, sin azimuth, 0).
    ax, ay = np.cos(azimuth), np.sin(azimuth)
    k = np.zeros((n, 3, 3))
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 0], k[:, 2, 1] = ay, -ax, -ay, ax
    eye = np.eye(3)[None, :, :]
    s, c = np.sin(tilt)[:, None, None], np.cos(tilt)[:, None, None]
    lean = eye + s * k + (1.0 - c) * (k @ k)
    rotation: npt.NDArray[np.float64] = lean @ turn
    return rotation
