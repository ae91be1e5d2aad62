"""The device's state file: boot ids and accepted commands, and a disk that refuses writes; the data
dir's lock."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.device.state import DataDirLock, DeviceState, StateError


def test_boot_ids_grow_and_survive_a_restart(tmp_path: Path) -> None:
    state = DeviceState(tmp_path)
    assert [state.next_boot() for _ in range(3)] == [1, 2, 3]
    state.close()
    again = DeviceState(tmp_path)
    assert again.boot == 3
    assert again.next_boot() == 4
    again.close()


def test_a_refused_write_gives_a_new_boot_id_all_the_same(tmp_path: Path) -> None:
    state = DeviceState(tmp_path)
    assert state.next_boot() == 1
    state._db.execute("PRAGMA query_only=1")  # every write now fails, as on a full disk
    assert state.next_boot() == 2
    assert state.next_boot() == 3
    assert state.write_failures == 2
    with pytest.raises(StateError, match="cannot write device state"):
        state.accept_command("c-1", expires_at=2e9, now=1e9)
    assert state.accepted_commands(now=1e9) == []
    state._db.execute("PRAGMA query_only=0")  # space came back: the counter catches up
    assert state.next_boot() == 4
    state.close()
    assert DeviceState(tmp_path).boot == 4


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real small filesystem (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_boot_ids_on_a_full_filesystem(tiny_tmpfs: Path) -> None:
    state = DeviceState(tiny_tmpfs)
    state.accept_command("c-1", expires_at=2e9, now=1e9)
    with (tiny_tmpfs / "filler").open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    boots = [state.next_boot() for _ in range(200)]  # the WAL grows with each: it runs out of room
    assert boots == list(range(1, 201))
    assert state.write_failures > 0
    assert [command for command, _ in state.accepted_commands(now=1e9)] == ["c-1"]
    (tiny_tmpfs / "filler").unlink()
    assert state.next_boot() == 201
    state.close()
    assert DeviceState(tiny_tmpfs).boot == 201


def test_the_data_dir_lock_is_held_until_released_and_names_its_holder(tmp_path: Path) -> None:
    held = DataDirLock(tmp_path)
    assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
    with pytest.raises(StateError, match=f"in use by process {os.getpid()}"):
        DataDirLock(tmp_path)
    held.release()
    held.release()
    DataDirLock(tmp_path).release()
