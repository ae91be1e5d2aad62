"""The outbox's sender window and how long it has waited for acknowledgements; a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.errors import OutboxStorageError
from edgekernel.link.outbox import Outbox, OutboxMessage
from edgekernel.link.outbox_store import AckJob, OutboxFile, PutJob
from edgekernel.link.ranges import SeqRanges


def cfg(**overrides: Any) -> OutboxConfig:
    return OutboxConfig(**{"synchronous": "NORMAL", **overrides})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


class Sender:
    """The one sender: takes every message `messages()` gives, as it gives it."""

    def __init__(self, outbox: Outbox) -> None:
        self.seqs: list[int] = []
        self._more = asyncio.Event()
        self._task = asyncio.create_task(self._run(outbox.messages()))

    async def _run(self, messages: AsyncIterator[OutboxMessage]) -> None:
        async for message in messages:
            self.seqs.append(message.seq)
            self._more.set()

    async def has(self, count: int, timeout: float = 10.0) -> list[int]:
        async with asyncio.timeout(timeout):
            while len(self.seqs) < count:
                self._more.clear()
                await self._more.wait()
        await asyncio.sleep(0.2)  # and no more
        return self.seqs

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# the window


def test_the_sender_gets_no_more_than_max_in_flight_until_acks_come(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_in_flight=5)) as outbox:
            for _ in range(12):
                await outbox.put("t", b"m")
            sender = Sender(outbox)
            assert await sender.has(5) == [1, 2, 3, 4, 5]
            await outbox.ack([(1, 2)])
            assert await sender.has(7) == [1, 2, 3, 4, 5, 6, 7]
            assert outbox.stats().in_flight == 5
            await outbox.ack([(3, 10)])  # 8-10 acknowledged before they were sent: not sent at all
            assert await sender.has(9) == [1, 2, 3, 4, 5, 6, 7, 11, 12]
            stats = outbox.stats()
            assert (stats.sent, stats.pending, stats.in_flight) == (9, 2, 2)
            await sender.stop()

    asyncio.run(main())


def test_ack_wait_counts_from_the_last_ack_not_from_when_messages_were_made(path: Path) -> None:
    async def main() -> None:
        offset = [-3600.0]
        async with Outbox(path, cfg(max_in_flight=4), clock=lambda: time.time() + offset[0]) as outbox:
            for _ in range(8):
                await outbox.put("t", b"m")
            offset[0] = 0.0
            assert outbox.stats().oldest_age_s > 3000
            assert outbox.stats().ack_wait_s == 0.0  # nothing in flight
            sender = Sender(outbox)
            await sender.has(4)
            await asyncio.sleep(0.3)
            assert 0.25 <= outbox.stats().ack_wait_s < 5
            await outbox.ack([(1, 1)])
            assert outbox.stats().ack_wait_s < 0.25
            await sender.has(5)
            await outbox.ack([(2, 5)])
            await sender.has(8)
            await outbox.ack([(6, 8)])
            assert outbox.stats().in_flight == 0
            assert outbox.stats().ack_wait_s == 0.0
            await sender.stop()

    asyncio.run(main())


def test_a_message_passed_over_by_later_acks_waits_from_when_it_was_sent(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_in_flight=3)) as outbox:
            for _ in range(6):
                await outbox.put("t", b"m")
            sender = Sender(outbox)
            await sender.has(3)  # 1-3 sent now
            await asyncio.sleep(0.4)
            await outbox.ack([(2, 3)])  # 1 was passed over
            await sender.has(5)  # 4 and 5 sent 0.6 s later, which restarts no wait for 1
            assert outbox.stats().ack_wait_s >= 0.55
            await outbox.ack([(1, 1)])
            assert outbox.stats().ack_wait_s < 0.3
            await sender.stop()

    asyncio.run(main())


def test_a_rewind_restarts_the_wait(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            await outbox.put("t", b"m")
            sender = Sender(outbox)
            await sender.has(1)
            await asyncio.sleep(0.3)
            assert outbox.stats().ack_wait_s >= 0.25
            outbox.rewind()
            assert await sender.has(2) == [1, 1]
            assert outbox.stats().ack_wait_s < 0.25
            await sender.stop()

    asyncio.run(main())


# a full disk


def small_database(monkeypatch: pytest.MonkeyPatch, pages: int) -> None:
    """SQLite's own limit on the file's pages, set in the writer thread as it opens: SQLITE_FULL."""
    real_open = OutboxFile.open

    def open_small(self: OutboxFile) -> Any:
        opened = real_open(self)
        assert self._db is not None
        self._db.execute(f"PRAGMA max_page_count={pages}")
        return opened

    monkeypatch.setattr(OutboxFile, "open", open_small)


def test_a_full_database_refuses_puts_with_a_counted_reason_and_resumes_after_acks(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_database(monkeypatch, pages=40)

    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            committed: list[int] = []
            refused: list[OutboxStorageError] = []
            while len(refused) < 4:
                try:
                    committed.append(await outbox.put("t", b"x" * 2000))
                except OutboxStorageError as err:
                    refused.append(err)
            assert {err.reason for err in refused} == {"disk_full"}
            assert "disk is full" in str(refused[0])
            assert 5 < len(committed) < 100
            stats = outbox.stats()
            assert (stats.disk_full, stats.failed, stats.committed) == (4, 4, len(committed))
            assert stats.pending == len(committed)  # what was committed is kept
            assert await outbox.ack([(committed[0], committed[-1])]) == len(committed)
            seq = await outbox.put("t", b"x" * 2000)
            assert seq > committed[-1]
            assert outbox.stats().pending == 1

    asyncio.run(main())


def test_acks_go_through_when_the_puts_they_were_batched_with_do_not_fit(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = OutboxFile(path, cfg())
    file.open()
    assert file._db is not None
    file._db.execute("PRAGMA max_page_count=30")
    loop = asyncio.new_event_loop()
    try:
        seq = 0
        while True:
            seq += 1
            outcome = file.run([PutJob(seq, "t", "", b"x" * 2000, 0.0, 2001, loop.create_future())])
            if outcome.error is not None:
                break
        assert isinstance(outcome.error, OutboxStorageError)
        ack = AckJob(SeqRanges([(1, 3)]), loop.create_future())
        put = PutJob(seq + 1, "t", "", b"x" * 200_000, 0.0, 200_001, loop.create_future())
        refused, done = file.commit([put, ack])
        assert refused.jobs == [put]
        assert isinstance(refused.error, OutboxStorageError)
        assert done.jobs == [ack]
        assert done.error is None
        assert len(done.results[0]) == 3  # type: ignore[arg-type]
        assert done.count == seq - 1 - 3
    finally:
        file.close()
        loop.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_refuses_puts_and_they_resume_when_space_returns(tiny_tmpfs: Path) -> None:
    filler = tiny_tmpfs / "filler"

    async def main() -> None:
        async with Outbox(tiny_tmpfs / "outbox.db", cfg(synchronous="FULL")) as outbox:
            first = await outbox.put("t", b"x" * 1000)
            with filler.open("wb", buffering=0) as out:  # every free block
                try:
                    while True:
                        out.write(b"\0" * 4096)
                except OSError:
                    pass
            reasons = []
            for _ in range(50):
                try:
                    await outbox.put("t", b"x" * 8000)
                except OutboxStorageError as err:
                    reasons.append(err.reason)
            assert reasons
            assert set(reasons) == {"disk_full"}
            stats = outbox.stats()
            assert stats.disk_full == len(reasons)
            assert stats.pending == stats.committed
            filler.unlink()
            seq = await outbox.put("t", b"x" * 8000)
            assert seq > first
            assert outbox.stats().pending == stats.pending + 1

    asyncio.run(main())
