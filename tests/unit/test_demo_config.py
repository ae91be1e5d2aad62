"""The demo's generated device configs: valid, running the agents of firmware-config/agents/."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekernel.cli.demo import VIBRATION_RATE_HZ, device_config
from edgekernel.config import DeviceConfig, load
from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.registry import settings_problems
from tools.datasets import DATASETS

AGENTS = Path(__file__).resolve().parents[2] / "firmware-config" / "agents"


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_each_device_validates_and_its_agents_accept_their_settings(index: int, tmp_path: Path) -> None:
    config = DeviceConfig.model_validate(device_config(index, tmp_path))
    assert [agent.name for agent in config.agents] == ["vibration-watch", "system-monitor"]
    for agent in config.agents:
        assert settings_problems(agent.agent, agent.config) == []


def test_the_agent_spec_files_are_dev_01s_agents(tmp_path: Path) -> None:
    config = DeviceConfig.model_validate(device_config(1, tmp_path))
    files = {path.stem: load(path, AgentSpec) for path in sorted(AGENTS.glob("*.yaml"))}
    assert files == {agent.name: agent for agent in config.agents}


def test_the_vibration_stream_is_what_the_model_was_trained_on(tmp_path: Path) -> None:
    config = DeviceConfig.model_validate(device_config(1, tmp_path))
    [vibration] = [sensor for sensor in config.sensors if sensor.stream == "vibration"]
    [watch] = [agent for agent in config.agents if agent.agent == "pipeline"]
    info = DATASETS["vibration"]
    assert vibration.rate_hz == VIBRATION_RATE_HZ == info.sample_rate_hz
    assert watch.config["window"] == info.window
    assert watch.config["source"] == "vibration"
    assert watch.config["model"] == config.kernel.models[0].name


def test_odd_devices_watch_a_faulty_machine(tmp_path: Path) -> None:
    rates = [
        DeviceConfig.model_validate(device_config(i, tmp_path)).sensors[0].sim.anomaly_rate for i in (1, 2)
    ]
    assert rates[0] > 0
    assert rates[1] == 0
