"""No process of ours outlives its parent: a gateway member whose parent dies while it starts, a child
whose death signal never comes, and everything the demo started when the demo is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekernel.gateway import StoreError, read_summary
from edgekernel.link import Mosquitto
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def alive(pid: int) -> bool:
    """Running, and not a zombie (an orphan's zombie waits for whoever reaps orphans here)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def orphan(child: list[str]) -> int:
    """Start `child` from a middle process, as our parents do (`child_env`), then SIGKILL the middle
    one at once; the child's pid."""
    middle = (
        "import os, signal, subprocess, sys\n"
        "from edgekernel.lifeline import child_env\n"
        "quiet = subprocess.DEVNULL\n"
        "proc = subprocess.Popen(sys.argv[1:], env=child_env(), stdin=quiet, stdout=quiet, stderr=quiet)\n"
        "print(proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", middle, *child], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return int(done.stdout.split()[0])


def stored_samples(store: Path) -> dict[str, int]:
    try:
        return {s.device: s.samples for s in read_summary(store)}
    except StoreError:
        return {}


def gone(pids: dict[str, int]) -> dict[str, int]:
    """Those still alive (named for what the wait shows when it fails)."""
    return {name: pid for name, pid in pids.items() if alive(pid)}


def test_a_gateway_member_whose_parent_dies_while_it_starts_stops(broker: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    store = {"path": str(tmp_path / "store.db")}
    config.write_text(yaml.safe_dump({"fleet": "plant", "gateway": "gw-1", "store": store, "processes": 2}))
    argv = ["-m", "edgekernel", "gateway", "run", "--config", str(config), "--broker", broker.url]
    pid = orphan([sys.executable, *argv, "--member", "1"])
    try:
        wait_until(lambda: not alive(pid), "the orphaned member to stop")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_orphan_without_a_death_signal_stops_by_its_parent_check(tmp_path: Path) -> None:
    child = (
        "import time\n"
        "import edgekernel.lifeline as lifeline\n"
        "lifeline.set_death_signal = lambda *args: False  # as on a platform without PR_SET_PDEATHSIG\n"
        "lifeline.guard_parent()\n"
        "time.sleep(600)\n"
    )
    pid = orphan([sys.executable, "-c", child])
    try:
        wait_until(lambda: not alive(pid), "the orphan to notice its parent is gone")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_child_told_of_a_parent_that_is_not_its_own_does_not_start() -> None:
    env = {**os.environ, "EDGEKERNEL_PARENT_PID": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "edgekernel", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: parent process 1 is gone; not starting"


def test_a_demo_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "edgekernel", "demo", "--devices", "2", "--duration", "900"]
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [*argv, "--workdir", str(workdir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    pids: dict[str, int] = {}
    try:
        run = wait_until(
            lambda: (workdir / "run.json").exists() and json.loads((workdir / "run.json").read_text()),
            "run.json",
            timeout=120,
            seen=demo.poll,
        )
        pids = {"broker": run["broker_pid"], **run["pids"]}
        assert len(pids) == 4
        store = Path(run["store"])
        wait_until(
            lambda: all(stored_samples(store).get(name, 0) > 0 for name in run["pids"] if name != "gw-1"),
            "samples from every device",
            seen=lambda: (stored_samples(store), demo.poll()),
        )
        assert all(alive(pid) for pid in pids.values())
        demo.kill()
        demo.wait(60)
        wait_until(lambda: not gone(pids), "every process of the demo to stop", seen=lambda: gone(pids))
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in gone(pids).values():
            os.kill(pid, signal.SIGKILL)
