"""The sim driver: a seeded grid of samples, exact in rate, bounded after a stall."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from pydantic import ValidationError

from edgekernel.config.models import BatchConfig, PlantConfig, SensorConfig, SimSignal
from edgekernel.device.drivers import registry
from edgekernel.device.drivers.errors import DriverConfigError, DriverNotFoundError
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


def test_an_unpublished_stream_feeds_its_tap_and_sends_nothing() -> None:
    sent: list[TelemetryBody] = []
    tapped: list[tuple[str, int]] = []

    async def emit(config: SensorConfig, body: TelemetryBody) -> None:
        sent.append(body)

    config = SensorConfig(stream="vib", rate_hz=100, publish=False, batch=BatchConfig(max_samples=10))
    stream = SensorStream(config, emit, tap=lambda name, samples: tapped.append((name, len(samples))), t0=0.0)
    asyncio.run(stream.poll(0.255))
    asyncio.run(stream.flush())
    assert tapped == [("vib", 26)]
    assert sent == []


def test_every_fault_kind_starts_at_random_and_looks_like_a_fault() -> None:
    healthy = SimSource(SimSignal(kind="vibration", seed=3, frequency_hz=30, noise=0.0), rate_hz=1000, t0=0.0)
    base = np.array([v for _, v in healthy.take(5000)])
    for kind in ("noise", "bearing", "misalignment", "burst"):
        signal = SimSignal(
            kind="vibration", seed=3, frequency_hz=30, noise=0.0, anomaly_rate=0.002, anomaly_kind=kind
        )
        source = SimSource(signal, rate_hz=1000, t0=0.0)
        values = np.array([v for _, v in source.take(5000)])
        assert source.anomalies > 0, kind
        assert np.abs(values - base).max() > 0.1, kind


def test_inject_runs_one_anomaly_for_its_duration() -> None:
    signal = SimSignal(kind="vibration", seed=5, frequency_hz=30, noise=0.0)
    clean = [v for _, v in SimSource(signal, rate_hz=1000, t0=0.0).take(1000)]
    source = SimSource(signal, rate_hz=1000, t0=0.0)
    source.take(100)
    source.inject("bearing", 0.2)
    values = [v for _, v in source.take(900)]
    changed = [i for i, (a, b) in enumerate(zip(values, clean[100:], strict=True)) if abs(a - b) > 1e-9]
    assert changed
    assert changed[-1] < 200
    assert (source.injected, source.anomalies) == (1, 1)


@pytest.mark.parametrize(("kind", "duration"), [("wobble", 1.0), ("burst", 0.0), ("burst", float("nan"))])
def test_inject_refuses_bad_requests(kind: str, duration: float) -> None:
    with pytest.raises(ValueError, match=r"anomaly kind|duration_s"):
        SimSource(SimSignal(), rate_hz=10, t0=0.0).inject(kind, duration)


def test_the_plant_settles_where_the_fan_duty_puts_it() -> None:
    plant = PlantConfig(ambient_c=20, heat_rise_c=40, cooling_c=30, time_constant_s=1.0)
    source = SimSource(SimSignal(kind="plant", noise=0.0, plant=plant), rate_hz=100, t0=0.0)
    assert source.take(1)[0][1] == pytest.approx(60.0)
    source.actuate(1.0)
    assert source.take(1000)[-1][1] == pytest.approx(30.0, abs=0.01)
    source.actuate(0.5)
    after_one_tau = source.take(100)[-1][1]
    assert after_one_tau == pytest.approx(45 - 15 * math.exp(-1), abs=0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        source.actuate(1.5)
    with pytest.raises(ValueError, match="takes no input"):
        SimSource(SimSignal(kind="sine"), rate_hz=10, t0=0.0).actuate(0.5)


def test_sensor_config_takes_sim_settings_either_way() -> None:
    a = SensorConfig(stream="v", sim=SimSignal(kind="vibration"))
    b = SensorConfig.model_validate({"stream": "v", "config": {"kind": "vibration"}})
    assert a.settings == b.settings == SimSignal(kind="vibration")
    with pytest.raises(ValidationError, match="driver replay takes its settings in config"):
        SensorConfig.model_validate({"stream": "v", "driver": "replay", "sim": {}})
    with pytest.raises(ValidationError, match="frequency_hz"):
        SensorConfig.model_validate({"stream": "v", "config": {"frequency_hz": -1}})


def test_the_registry_names_what_is_installed_and_refuses_bad_settings() -> None:
    assert {"sim", "replay", "mqtt", "coap"} <= set(registry.installed())
    with pytest.raises(DriverNotFoundError, match=r"stream s: no driver 'nope' .*installed: coap, mqtt"):
        registry.open_source("nope", "s", {}, rate_hz=1, t0=0)
    with pytest.raises(DriverConfigError, match="stream s: driver replay config: file: Field required"):
        registry.open_source("replay", "s", {}, rate_hz=1, t0=0)
