"""The sim driver: a seeded grid of samples, exact in rate, bounded after a stall."""

from __future__ import annotations

import asyncio

from edgekernel.config.models import BatchConfig, SensorConfig, SimSignal
from edgekernel.device.drivers.sim import SimSource
from edgekernel.device.telemetry import SensorStream
from edgekernel.protocol import TelemetryBody


def test_same_seed_same_values_and_exact_rate() -> None:
    a = SimSource(SimSignal(kind="vibration", seed=7), rate_hz=100, t0=0.0)
    b = SimSource(SimSignal(kind="vibration", seed=7), rate_hz=100, t0=0.0)
    assert a.due(0.995) == 100
    first = a.take(a.due(0.995))
    assert first == b.take(100)
    assert [t for t, _ in first[:3]] == [0.0, 0.01, 0.02]
    assert a.due(0.995) == 0
    assert a.due(1.0) == 1


def test_a_long_stall_skips_ahead_and_counts() -> None:
    source = SimSource(SimSignal(), rate_hz=50, t0=0.0, max_catch_up_s=2.0)
    assert source.due(3600.0) == 100
    assert source.skipped == 50 * 3600 + 1 - 100
    source.take(100)
    assert source.due(3600.0) == 0


def test_anomalies_are_injected_at_the_configured_rate() -> None:
    source = SimSource(SimSignal(kind="sine", seed=1, anomaly_rate=0.01), rate_hz=1000, t0=0.0)
    source.take(20_000)
    assert 50 < source.anomalies < 300


def test_stream_packs_batches_by_size_and_age() -> None:
    sent: list[TelemetryBody] = []

    async def emit(config: SensorConfig, body: TelemetryBody) -> None:
        sent.append(body)

    config = SensorConfig(stream="vib", rate_hz=100, batch=BatchConfig(max_samples=10, max_wait_ms=10_000))
    stream = SensorStream(config, emit, t0=0.0)
    asyncio.run(stream.poll(0.255))
    assert [len(b.samples) for b in sent] == [10, 10]
    asyncio.run(stream.flush())
    assert [len(b.samples) for b in sent] == [10, 10, 6]
