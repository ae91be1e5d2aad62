"""No process of ours outlives the process that started it.

A parent starts our programs with `child_env()`, which names it in the environment; the child calls
`guard_parent()` first thing, before its heavy imports: on Linux the kernel then sends it SIGTERM when
the parent dies (``PR_SET_PDEATHSIG``), a thread checks ``getppid()`` every second in case that signal
never comes (a parent that died before the call, a platform without it), and a child whose parent is
gone already exits at once. Programs that are not ours (Mosquitto) are started with
`parent_death_preexec()` as their ``preexec_fn``.

Imports nothing of edgekernel's, so that it can run before everything else.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping

PARENT_ENV = "EDGEKERNEL_PARENT_PID"
POLL_S = 1.0
GRACE_S = 30.0  # after SIGTERM, how long an orphan may take to stop cleanly before it just exits
ORPHANED_EXIT = 1

_PR_SET_PDEATHSIG = 1
_prctl: Callable[[int, int], int] | None = None


def _load_prctl() -> Callable[[int, int], int] | None:
    """libc's prctl on Linux, looked up once (never in a forked child, where loading may deadlock)."""
    global _prctl  # noqa: PLW0603 (one lookup per process)
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    return _prctl


def set_death_signal(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Have `sig` sent to this process when the thread that started it ends (on Linux, where that is the
    parent's main thread for every parent of ours); False where that cannot be set."""
    prctl = _load_prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig)) == 0


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (`env`, by default this process's) for a child that is to die with this process.
    Start the child from a thread that lives as long as the process (the death signal follows the
    thread that forked)."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def guard_parent() -> None:
    """If a parent asked for it (`child_env`), stop this process when that parent dies."""
    wanted = os.environ.pop(PARENT_ENV, "")  # not inherited: a child of ours names its own parent
    if not wanted.isdigit():
        return
    parent = int(wanted)
    set_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        sys.stderr.write(f"error: parent process {parent} is gone; not starting\n")
        sys.stderr.flush()
        os._exit(ORPHANED_EXIT)
    threading.Thread(target=_watch, args=(parent,), name="lifeline", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(ORPHANED_EXIT)


def parent_death_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for a program that is not ours: it gets SIGTERM when this process dies, and is
    killed before it starts if this process is gone already. Call it in the parent, before the fork."""
    parent = os.getpid()
    _load_prctl()

    def preexec() -> None:
        set_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
