"""`run_until_signal` stops on SIGTERM even when the event loop is too busy to read its wake-up pipe
(which then fills, and a signal told only through that pipe is lost: "Exception ignored when trying to
write to the signal wakeup fd: BlockingIOError", and the program runs on)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import asyncio, sys, threading, time
from pathlib import Path
from edgekernel.cli.common import run_until_signal

sent = Path(sys.argv[1])

async def main(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def flood() -> None:  # as paho's thread does when the loop falls behind: a wake-up per callback
        for _ in range(200_000):
            loop.call_soon_threadsafe(lambda: None)

    thread = threading.Thread(target=flood)
    thread.start()
    thread.join()
    print("busy", flush=True)
    while not sent.exists():  # the loop stays busy, reading none of its wake-ups, until SIGTERM came
        time.sleep(0.01)
    try:
        async with asyncio.timeout(30):
            await stop.wait()
    except TimeoutError:
        print("SIGTERM was lost", flush=True)
        sys.exit(1)
    print("stopped", flush=True)

run_until_signal(main)
"""


def test_sigterm_while_the_loop_is_busy_and_its_wakeup_pipe_full_stops_the_program(tmp_path: Path) -> None:
    sent = tmp_path / "sent"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(sent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "busy"
        proc.send_signal(signal.SIGTERM)
        sent.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert "stopped" in out
    assert "wakeup fd" not in err
