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
from tests.waiting import wait_until

from .harness import check_exactly_once, device, gateway, more_than_now, running, wait_stored, wait_subscribed

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def members_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(line) for line in out.split()]


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
    names = [dev.name for dev in devices]
    with running(gw, devices):
        assert gw.proc is not None
        pid = gw.proc.pid

        def one_member(other_than: int = 0) -> int | None:
            found = members_of(pid)
            return found[0] if len(found) == 1 and found[0] != other_than else None

        member = wait_until(one_member, "the member process", seen=lambda: members_of(pid))
        wait_subscribed(gw, "gw-1/1")
        wait_stored(tmp_path, dict.fromkeys(names, 50))
        os.kill(member, signal.SIGKILL)
        member = wait_until(lambda: one_member(member), "the member restarted", seen=lambda: members_of(pid))
        wait_subscribed(gw, "gw-1/1", times=2)  # running, not starting: it has asked to die with its parent
        wait_stored(tmp_path, more_than_now(tmp_path, names, 50), what="50 more each with the new member")
        gw.kill()  # SIGKILL: the member is told by the kernel, and stops too
        wait_until(lambda: not alive(member), "the member to stop with its parent")
        time.sleep(1.0)
        gw.start()
        wait_stored(tmp_path, more_than_now(tmp_path, names, 50), what="50 more each after the restart")
    log = gw.log.read_text()
    assert "gateway member 1 exited" in log
    for dev in devices:
        assert check_exactly_once(tmp_path, dev.name) > 150
