"""A gateway with `processes: 2`: its member process restarted when it dies, both stopped when the
gateway is SIGKILLed (a member dies with its parent), and nothing lost or stored twice throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto

from .harness import check_exactly_once, device, gateway, running

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def members_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(line) for line in out.split()]


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_gateway_of_two_processes_survives_its_member_and_itself_being_killed(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, persistent_broker.url, processes=2)
    devices = [device(tmp_path, f"dev-{i}", persistent_broker.url) for i in (1, 2)]
    with running(gw, devices):
        assert gw.proc is not None
        wait_for(lambda: len(members_of(gw.proc.pid)) == 1, 15, "the member process")
        [member] = members_of(gw.proc.pid)
        time.sleep(2.0)
        os.kill(member, signal.SIGKILL)
        wait_for(lambda: members_of(gw.proc.pid) not in ([], [member]), 15, "the member restarted")
        [member] = members_of(gw.proc.pid)
        time.sleep(2.0)
        gw.kill()  # SIGKILL: the member is told by the kernel, and stops too
        wait_for(lambda: not alive(member), 15, "the member to stop with its parent")
        time.sleep(1.0)
        gw.start()
        time.sleep(4.0)
    log = gw.log.read_text()
    assert "gateway member 1 exited" in log
    for dev in devices:
        assert check_exactly_once(tmp_path, dev.name) > 50
