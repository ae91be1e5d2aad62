"""The extra processes of a gateway with ``processes`` above 1: started with it, restarted when one
dies, stopped when it stops, and gone when it dies (`edgekernel.lifeline`). Each runs
``edgekernel gateway run --member N`` with the same config."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable

from edgekernel.cli.common import Main
from edgekernel.lifeline import child_env

log = logging.getLogger("edgekernel.gateway.members")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STOP_TIMEOUT_S = 30.0


class Members:
    def __init__(self, count: int, argv: Callable[[int], list[str]]) -> None:
        self.argv = argv
        self.numbers = list(range(1, count + 1))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0

    def around(self, main: Main) -> Main:
        """`main` with the members running beside it for as long as it runs."""

        async def run(stop: asyncio.Event) -> None:
            for number in self.numbers:
                self._spawn(number)
            watcher = asyncio.create_task(self._watch(stop), name="members")
            try:
                await main(stop)
            finally:
                watcher.cancel()
                await asyncio.to_thread(self._stop_all)

        return run

    def _spawn(self, number: int) -> None:
        self.procs[number] = subprocess.Popen(self.argv(number), stdin=subprocess.DEVNULL, env=child_env())
        log.info("gateway member %d started (pid %d)", number, self.procs[number].pid)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Restart a member that exits, until the gateway is stopping (a Ctrl-C reaches them all)."""
        delay = dict.fromkeys(self.numbers, RESTART_MIN_S)
        while True:
            await asyncio.sleep(RESTART_MIN_S)
            for number, proc in list(self.procs.items()):
                code = proc.poll()
                if stop.is_set():
                    return
                if code is None:
                    delay[number] = RESTART_MIN_S
                    continue
                log.error("gateway member %d exited (%d); restarting in %.0f s", number, code, delay[number])
                await asyncio.sleep(delay[number])
                if stop.is_set():
                    return
                delay[number] = min(delay[number] * 2, RESTART_MAX_S)
                self.restarts += 1
                self._spawn(number)

    def _stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for number, proc in self.procs.items():
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("gateway member %d did not stop within %.0f s: killed", number, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
