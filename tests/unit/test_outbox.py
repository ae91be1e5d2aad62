"""The durable outbox: seqs, order, group commit, acks, overflow policies, crash safety, corrupt files."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.errors import LinkError, OutboxError, OutboxFullError
from edgekernel.link.outbox import Outbox, OutboxMessage
from edgekernel.link.outbox_store import OutboxFile
from edgekernel.link.ranges import SeqRanges

T = TypeVar("T")
KB = 1024


def cfg(**overrides: Any) -> OutboxConfig:
    return OutboxConfig(**{"synchronous": "NORMAL", **overrides})


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def kb(seq: int = 0) -> bytes:
    """A payload that makes a 1 KiB message on topic "t"."""
    return b"x" * (KB - 1)


async def everything(outbox: Outbox) -> list[OutboxMessage]:
    outbox.rewind()
    return await outbox.pending(10**7)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


# seqs


def test_seqs_start_at_one_follow_put_order_and_reach_the_payload(path: Path) -> None:
    async def main() -> list[OutboxMessage]:
        async with Outbox(path, cfg()) as outbox:
            seqs = [await outbox.put("t/a", lambda seq: b"m%d" % seq, stream="a") for _ in range(5)]
            assert seqs == [1, 2, 3, 4, 5]
            assert outbox.stats().highest_seq == 5
            return await outbox.pending(10)

    messages = run(main)
    assert [m.seq for m in messages] == [1, 2, 3, 4, 5]
    assert [m.payload for m in messages] == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert {(m.topic, m.stream, m.size) for m in messages} == {("t/a", "a", 5)}


def test_seq_survives_reopen_even_when_every_row_was_acked(path: Path) -> None:
    async def first() -> None:
        async with Outbox(path, cfg()) as outbox:
            for _ in range(5):
                await outbox.put("t", b"x")
            assert await outbox.ack([(1, 5)]) == 5

    async def second() -> int:
        async with Outbox(path, cfg()) as outbox:
            stats = outbox.stats()
            assert (stats.pending, stats.pending_bytes, stats.highest_seq) == (0, 0, 5)
            assert await outbox.pending() == []
            return await outbox.put("t", b"x")

    run(first)
    assert run(second) == 6


def test_seq_survives_reopen_after_drops(path: Path) -> None:
    async def first() -> tuple[tuple[int, int], ...]:
        async with Outbox(path, cfg(max_bytes=4 * KB, overflow="drop-oldest")) as outbox:
            for _ in range(10):
                await outbox.put("t", kb)
            return outbox.stats().dropped_oldest_ranges

    async def second() -> tuple[int, list[int]]:
        async with Outbox(path, cfg(max_bytes=4 * KB, overflow="drop-oldest")) as outbox:
            return await outbox.put("t", kb), [m.seq for m in await everything(outbox)]

    assert run(first) == ((1, 6),)
    assert run(second) == (11, [8, 9, 10, 11])


async def _epoch_and_seq(path: Path) -> tuple[int, bool, int]:
    async with Outbox(path, cfg()) as outbox:
        return outbox.epoch, outbox.new_epoch, await outbox.put("t", b"x")


def test_an_empty_file_starts_a_new_seq_space_that_survives_restarts(path: Path) -> None:
    epoch, new, seq = run(lambda: _epoch_and_seq(path))
    assert (new, seq) == (True, 1)
    assert 1 <= epoch <= 2**63 - 1
    assert run(lambda: _epoch_and_seq(path)) == (epoch, False, 2)


@pytest.mark.parametrize("how", ["moved aside", "truncated"])
def test_a_reset_outbox_starts_again_at_1_in_another_epoch(path: Path, how: str) -> None:
    first, _, _ = run(lambda: _epoch_and_seq(path))
    if how == "truncated":
        path.write_bytes(b"")
    else:
        path.rename(path.with_suffix(".aside"))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    second, new, seq = run(lambda: _epoch_and_seq(path))
    assert (new, seq) == (True, 1)
    assert second != first


def test_a_file_from_before_epochs_stays_in_epoch_0(path: Path) -> None:
    run(lambda: _epoch_and_seq(path))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE key = 'epoch'")
    db.close()
    assert run(lambda: _epoch_and_seq(path)) == (0, False, 2)
    assert run(lambda: _epoch_and_seq(path)) == (0, False, 3)


def test_a_failing_payload_factory_takes_no_seq(path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise ValueError("cannot encode")

    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            with pytest.raises(ValueError, match="cannot encode"):
                await outbox.put("t", broken)
            with pytest.raises(TypeError, match="payload is bytes, not str"):
                await outbox.put("t", str)  # type: ignore[arg-type]
            assert await outbox.put("t", b"x") == 1
            assert outbox.stats().refused == 2

    run(main)


# group commit


def test_concurrent_puts_share_few_transactions_and_keep_call_order(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_batch=256)) as outbox:
            seqs = await asyncio.gather(*(outbox.put("t", lambda s: b"%d" % s) for _ in range(1000)))
            stats = outbox.stats()
            assert seqs == list(range(1, 1001))
            assert stats.committed == stats.pending == 1000
            assert stats.transactions <= 6, stats.transactions  # 1000 / 256 -> 4, and some slack
            assert [m.payload for m in await outbox.pending(2000)] == [b"%d" % s for s in seqs]

    run(main)


def test_max_delay_lets_sequential_bursts_join_one_transaction(path: Path) -> None:
    async def main() -> int:
        async with Outbox(path, cfg(max_delay_ms=200)) as outbox:

            async def later(delay: float) -> int:
                await asyncio.sleep(delay)
                return await outbox.put("t", b"x")

            await asyncio.gather(*(later(i * 0.005) for i in range(10)))
            return outbox.stats().transactions

    assert run(main) == 1


def test_put_returns_only_after_its_transaction_committed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    committed: list[int] = []
    real_run = OutboxFile.run

    def slow_run(self: OutboxFile, jobs: list[Any]) -> Any:
        gate.wait(5)
        outcome = real_run(self, jobs)
        committed.append(self.hwm)
        return outcome

    monkeypatch.setattr(OutboxFile, "run", slow_run)

    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            task = asyncio.create_task(outbox.put("t", b"x"))
            await asyncio.sleep(0.05)
            assert not task.done()
            assert outbox.stats().committed == 0
            gate.set()
            assert await task == 1
            assert committed == [1]

    run(main)


def test_a_failed_commit_fails_its_puts_and_keeps_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = OutboxFile._run
    calls = {"n": 0}

    def failing_once(self: OutboxFile, db: sqlite3.Connection, outcome: Any) -> None:
        calls["n"] += 1
        real(self, db, outcome)
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(OutboxFile, "_run", failing_once)

    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            with pytest.raises(OutboxError, match="disk I/O error") as caught:
                await outbox.put("t", b"lost")
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert str(path) in str(caught.value)
            assert await outbox.put("t", b"kept") == 2  # seq 1 never committed: a gap, never a reuse
            stats = outbox.stats()
            assert (stats.put, stats.committed, stats.failed, stats.pending) == (2, 1, 1, 1)
        async with Outbox(path, cfg()) as outbox:
            assert [(m.seq, m.payload) for m in await everything(outbox)] == [(2, b"kept")]

    run(main)


def test_close_commits_what_was_put_before_it(path: Path) -> None:
    async def main() -> None:
        outbox = Outbox(path, cfg())
        await outbox.start()
        tasks = [asyncio.create_task(outbox.put("t", b"x")) for _ in range(50)]
        await asyncio.sleep(0)
        await outbox.close()
        assert sorted(await asyncio.gather(*tasks)) == list(range(1, 51))
        with pytest.raises(OutboxError, match="not open"):
            await outbox.put("t", b"x")
        async with Outbox(path, cfg()) as again:
            assert again.stats().pending == 50

    run(main)


# sending, acks, rewind


def test_pending_hands_out_each_message_once_in_order(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            for _ in range(7):
                await outbox.put("t", b"x")
            assert [m.seq for m in await outbox.pending(3)] == [1, 2, 3]
            assert [m.seq for m in await outbox.pending(3)] == [4, 5, 6]
            stats = outbox.stats()
            assert (stats.sent, stats.in_flight, stats.pending) == (6, 6, 7)
            assert [m.seq for m in await outbox.pending(3)] == [7]
            assert await outbox.pending(3) == []
            with pytest.raises(ValueError, match="limit"):
                await outbox.pending(0)

    run(main)


def test_ack_deletes_exactly_the_ranges_and_is_idempotent(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            for _ in range(10):
                await outbox.put("t", b"xy")
            await outbox.pending(4)
            assert await outbox.ack([(2, 3), (6, 6)]) == 3
            assert await outbox.ack([(2, 3), (6, 6)]) == 0
            assert await outbox.ack(SeqRanges([(0, 1), (50, 10**12)])) == 1
            assert await outbox.ack([]) == 0
            stats = outbox.stats()
            assert (stats.acked, stats.pending, stats.pending_bytes, stats.in_flight) == (4, 6, 18, 1)
            assert [m.seq for m in await everything(outbox)] == [4, 5, 7, 8, 9, 10]
            with pytest.raises(ValueError, match="not a range"):
                await outbox.ack([(5, 4)])

    run(main)


def test_bury_moves_rows_to_the_dead_letters_which_survive_reopen(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            for n in range(6):
                await outbox.put("t", f"m{n}".encode(), stream="s")
            assert await outbox.bury([(2, 3)], "4.13: too large") == 2
            assert await outbox.bury([(2, 3)], "again") == 0
            stats = outbox.stats()
            assert (stats.pending, stats.dead, stats.buried, stats.acked) == (4, 2, 2, 0)
            assert [m.seq for m in await everything(outbox)] == [1, 4, 5, 6]
        async with Outbox(path, cfg()) as outbox:
            assert (outbox.stats().pending, outbox.stats().dead, outbox.stats().buried) == (4, 2, 0)
        with sqlite3.connect(path) as db:
            rows = list(db.execute("SELECT seq, topic, stream, payload, reason FROM dead ORDER BY seq"))
        assert rows == [(2, "t", "s", b"m1", "4.13: too large"), (3, "t", "s", b"m2", "4.13: too large")]

    run(main)


def test_only_the_newest_dead_letters_are_kept(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgekernel.link.outbox_store.KEEP_DEAD", 3)

    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            for _ in range(8):
                await outbox.put("t", b"x")
            await outbox.bury([(1, 2)], "r")
            await outbox.bury([(4, 6)], "r")
            assert outbox.stats().dead == 3
            assert outbox.stats().buried == 5
        with sqlite3.connect(path) as db:
            assert [seq for (seq,) in db.execute("SELECT seq FROM dead ORDER BY seq")] == [4, 5, 6]

    run(main)


def test_rewind_resends_every_unacked_message_from_the_oldest(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(memory_bytes=0)) as outbox:  # every read goes to the file
            for _ in range(10):
                await outbox.put("t", lambda s: b"%d" % s)
            assert [m.seq for m in await outbox.pending(8)] == list(range(1, 9))
            await outbox.ack([(1, 3), (6, 6)])
            assert outbox.rewind() == 4
            assert outbox.stats().in_flight == 0
            again = await outbox.pending(100)
            assert [m.seq for m in again] == [4, 5, 7, 8, 9, 10]
            assert [m.payload for m in again] == [b"4", b"5", b"7", b"8", b"9", b"10"]
            await outbox.put("t", b"new")
            assert [m.seq for m in await outbox.pending(100)] == [11]

    run(main)


def test_messages_iterates_commits_as_they_come_and_ends_on_close(path: Path) -> None:
    async def main() -> list[int]:
        outbox = Outbox(path, cfg())
        await outbox.start()
        seen: list[int] = []

        async def sender() -> None:
            rewound = False
            async for message in outbox.messages(batch=4):
                seen.append(message.seq)
                if message.seq == 6 and not rewound:
                    rewound = True
                    await outbox.ack([(1, 4)])
                    outbox.rewind()

        task = asyncio.create_task(sender())
        for _ in range(10):
            await outbox.put("t", b"x")
            await asyncio.sleep(0.001)
        async with asyncio.timeout(5):
            while outbox.stats().sent < 12:  # noqa: ASYNC110  # polling the counter is the point
                await asyncio.sleep(0.001)
        await outbox.close()
        await asyncio.wait_for(task, 5)
        return seen

    seen = run(main)
    cut = seen.index(6) + 1
    assert seen[:cut] == [1, 2, 3, 4, 5, 6]
    assert seen[cut:] == [5, 6, 7, 8, 9, 10]


# overflow


def test_drop_newest_refuses_and_counts(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, overflow="drop-newest")) as outbox:
            for _ in range(4):
                await outbox.put("t", kb)
            with pytest.raises(OutboxFullError) as caught:
                await outbox.put("t", kb)
            full = caught.value
            assert (full.policy, full.size, full.max_bytes) == ("drop-newest", KB, 4 * KB)
            assert isinstance(caught.value, LinkError)
            stats = outbox.stats()
            assert (stats.dropped_newest, stats.dropped_newest_bytes, stats.pending_bytes) == (1, KB, 4 * KB)
            await outbox.ack([(1, 1)])
            assert await outbox.put("t", kb) == 5  # a refused message took no seq
            assert outbox.stats().put == 6

    run(main)


def test_drop_oldest_drops_the_oldest_and_records_which(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, overflow="drop-oldest")) as outbox:
            for _ in range(4):
                await outbox.put("t", kb)
            assert [m.seq for m in await outbox.pending(2)] == [1, 2]
            await asyncio.gather(outbox.put("t", kb), outbox.put("t", kb), outbox.put("t", b"x" * 99))
            stats = outbox.stats()
            assert stats.dropped_oldest_ranges == ((1, 3),)
            assert (stats.dropped_oldest, stats.dropped_oldest_bytes) == (3, 3 * KB)
            assert stats.dropped_oldest_sent == 2  # 1 and 2 had been handed to the sender
            assert stats.pending_bytes == 3 * KB + 100 <= stats.max_bytes
            assert stats.in_flight == 0
            assert [m.seq for m in await outbox.pending(10)] == [4, 5, 6, 7]
            assert await outbox.ack([(1, 3)]) == 0

    run(main)


def test_block_waits_in_order_until_acks_free_room(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, block_timeout_s=None)) as outbox:
            for _ in range(4):
                await outbox.put("t", kb)
            first = asyncio.create_task(outbox.put("t", kb))
            second = asyncio.create_task(outbox.put("t", b"y"))  # small, but waits its turn
            await asyncio.sleep(0.05)
            assert not first.done()
            assert not second.done()
            await outbox.ack([(1, 1)])
            assert await first == 5
            await asyncio.sleep(0.02)
            assert not second.done()
            await outbox.ack([(2, 2)])
            assert await second == 6
            assert outbox.stats().pending_bytes == 4 * KB - KB + 2

    run(main)


def test_block_under_load_delivers_everything_once_in_order_within_the_bound(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, block_timeout_s=5)) as outbox:
            delivered: list[int] = []
            highest_bytes = 0

            async def producer() -> None:
                for _ in range(10):
                    await outbox.put("t", kb)

            async def gateway() -> None:
                nonlocal highest_bytes
                async for message in outbox.messages(batch=3):
                    delivered.append(message.seq)
                    highest_bytes = max(highest_bytes, outbox.stats().pending_bytes)
                    await outbox.ack([(message.seq, message.seq)])

            sender = asyncio.create_task(gateway())
            await asyncio.gather(*(producer() for _ in range(20)))
            async with asyncio.timeout(5):
                while len(delivered) < 200:  # noqa: ASYNC110  # polling the list is the point
                    await asyncio.sleep(0.001)
            await outbox.close()
            await sender
            assert delivered == list(range(1, 201))
            assert highest_bytes <= 4 * KB
            stats = outbox.stats()
            assert (stats.committed, stats.acked, stats.pending, stats.refused) == (200, 200, 0, 0)

    run(main)


def test_block_times_out_with_a_clear_error(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, block_timeout_s=0.05)) as outbox:
            for _ in range(4):
                await outbox.put("t", kb)
            started = time.monotonic()
            with pytest.raises(OutboxFullError, match=r"stayed full for 0\.05 s") as caught:
                await outbox.put("t", kb)
            assert time.monotonic() - started >= 0.05
            assert (caught.value.policy, caught.value.size) == ("block", KB)
            assert outbox.stats().refused == 1
            await outbox.ack([(1, 1)])
            assert await outbox.put("t", kb) == 5

    run(main)


def test_close_fails_puts_still_waiting_for_room(path: Path) -> None:
    async def main() -> None:
        outbox = Outbox(path, cfg(max_bytes=4 * KB, block_timeout_s=None))
        await outbox.start()
        for _ in range(4):
            await outbox.put("t", kb)
        waiting = asyncio.create_task(outbox.put("t", kb))
        await asyncio.sleep(0.01)
        await outbox.close()
        with pytest.raises(OutboxError, match="closed while a message on 't' waited for room"):
            await waiting
        assert outbox.stats().refused == 1

    run(main)


@pytest.mark.parametrize("policy", ["block", "drop-oldest", "drop-newest"])
def test_a_message_larger_than_the_outbox_is_refused(path: Path, policy: str) -> None:
    async def main() -> None:
        async with Outbox(path, cfg(max_bytes=4 * KB, overflow=policy)) as outbox:
            with pytest.raises(OutboxError, match="can never fit"):
                await outbox.put("t", b"x" * 4 * KB)
            assert outbox.stats().refused == 1

    run(main)


# the backlog


def test_stats_show_the_age_of_the_oldest_unacked_message(path: Path) -> None:
    now = [1000.0]

    async def main() -> None:
        async with Outbox(path, cfg(), clock=lambda: now[0]) as outbox:
            assert outbox.stats().oldest_age_s == 0.0
            await outbox.put("t", b"x")
            now[0] = 1005.0
            await outbox.put("t", b"x")
            now[0] = 1010.0
            assert outbox.stats().oldest_age_s == 10.0
            await outbox.ack([(1, 1)])
            assert outbox.stats().oldest_age_s == 5.0
            await outbox.ack([(2, 2)])
            assert outbox.stats().oldest_age_s == 0.0

    run(main)


def test_config_refuses_unknown_keys_and_policies() -> None:
    with pytest.raises(ValidationError):
        OutboxConfig.model_validate({"overflow": "drop-random"})
    with pytest.raises(ValidationError):
        OutboxConfig.model_validate({"max_byte": 10})
    assert OutboxConfig().synchronous == "FULL"


# the file


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(path: Path) -> None:
    garbage = b"definitely not SQLite " * 300
    path.write_bytes(garbage)
    with pytest.raises(OutboxError, match="is corrupt") as caught:
        run(lambda: Outbox(path, cfg()).start())
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage


def test_a_damaged_outbox_is_refused(path: Path) -> None:
    async def fill() -> None:
        async with Outbox(path, cfg()) as outbox:
            await asyncio.gather(*(outbox.put("t", b"%d" % i * 20) for i in range(3000)))

    run(fill)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 10 * page
    data[3 * page : 8 * page] = b"\xa5" * (5 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(OutboxError, match="is corrupt") as caught:
        run(lambda: Outbox(path, cfg()).start())
    assert str(path) in str(caught.value)


def test_another_sqlite_file_is_not_taken_over(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(OutboxError, match="not an edgekernel outbox"):
        run(lambda: Outbox(path, cfg()).start())


def test_an_outbox_in_use_cannot_be_opened_twice(path: Path) -> None:
    async def main() -> None:
        async with Outbox(path, cfg()) as outbox:
            await outbox.put("t", b"x")
            with pytest.raises(OutboxError, match="in use"):
                await Outbox(path, cfg()).start()
            assert await outbox.put("t", b"x") == 2

    run(main)


# crash safety

CHILD = """
import asyncio
import sys
from pathlib import Path

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.outbox import Outbox


async def producer(outbox):
    while True:
        seq = await outbox.put("t", lambda seq: b"m%d" % seq)
        sys.stdout.write(f"{seq}\\n")
        sys.stdout.flush()


async def main():
    async with Outbox(Path(sys.argv[1]), OutboxConfig(synchronous="FULL")) as outbox:
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        await asyncio.gather(*(producer(outbox) for _ in range(8)))


asyncio.run(main())
"""


def _run_child_and_kill(script: Path, path: Path, rng: random.Random) -> list[int]:
    """Seqs whose put returned before the child got SIGKILL."""
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        returned = [int(child.stdout.readline()) for _ in range(rng.randint(1, 1500))]
        time.sleep(rng.random() * 0.02)
    finally:
        child.kill()
        tail = child.stdout.read()
        child.wait()
        child.stdout.close()
    assert child.returncode == -9
    *complete, _partial = tail.split("\n")
    return returned + [int(line) for line in complete]


def test_every_put_that_returned_survives_sigkill(tmp_path: Path, path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    rng = random.Random()
    printed: list[int] = []
    for _ in range(3):
        printed += _run_child_and_kill(script, path, rng)

        async def stored() -> tuple[int, list[OutboxMessage]]:
            async with Outbox(path, cfg()) as outbox:
                return outbox.stats().highest_seq, await outbox.pending(10**7)

        highest, messages = run(stored)
        seqs = [m.seq for m in messages]
        assert seqs == list(range(1, highest + 1)), "committed seqs are contiguous, each once"
        assert all(m.payload == b"m%d" % m.seq for m in messages)
        assert len(printed) == len(set(printed)), "a seq that was returned is never handed out again"
        assert set(printed) <= set(seqs), "every put that returned is in the file"


# against a model


@dataclass
class Model:
    policy: str
    max_bytes: int = 4 * KB
    rows: dict[int, int] = field(default_factory=dict)
    created: dict[int, float] = field(default_factory=dict)
    hwm: int = 0
    sent_upto: int = 0
    dropped: set[int] = field(default_factory=set)
    refused: int = 0

    def put(self, size: int, now: float) -> int | None:
        if self.policy == "drop-newest" and sum(self.rows.values()) + size > self.max_bytes:
            self.refused += 1
            return None
        self.hwm += 1
        self.rows[self.hwm] = size
        self.created[self.hwm] = now
        while sum(self.rows.values()) > self.max_bytes:
            oldest = min(self.rows)
            del self.rows[oldest]
            self.dropped.add(oldest)
        return self.hwm

    def ack(self, ranges: list[tuple[int, int]]) -> int:
        gone = {seq for seq in self.rows for first, last in ranges if first <= seq <= last}
        for seq in gone:
            del self.rows[seq]
        return len(gone)

    def send(self, limit: int) -> list[int]:
        out = sorted(seq for seq in self.rows if seq > self.sent_upto)[:limit]
        if out:
            self.sent_upto = out[-1]
        return out


size = st.integers(1, 1500)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), size),
        st.tuples(st.just("burst"), st.lists(size, min_size=2, max_size=8)),
        st.tuples(st.just("ack"), st.lists(st.tuples(st.integers(0, 12), st.integers(0, 4)), max_size=4)),
        st.tuples(st.just("send"), st.integers(1, 6)),
        st.tuples(st.just("rewind")),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


def _payload(size: int) -> bytes:
    return b"p" * (size - 1)  # the topic "t" is the last byte


async def _play(path: Path, policy: str, ops: list[tuple[Any, ...]]) -> None:
    model = Model(policy)
    config = cfg(max_bytes=model.max_bytes, overflow=policy)
    now = [0.0]
    outbox = Outbox(path, config, clock=lambda: now[0])
    await outbox.start()
    try:
        for step, op in enumerate(ops):
            now[0] = float(step)
            if op[0] == "put" or op[0] == "burst":
                sizes = [op[1]] if op[0] == "put" else op[1]
                results = await asyncio.gather(
                    *(outbox.put("t", _payload(n)) for n in sizes), return_exceptions=True
                )
                expected = [model.put(n, now[0]) for n in sizes]
                assert [None if isinstance(r, OutboxFullError) else r for r in results] == expected
            elif op[0] == "ack":
                ranges = [(max(0, model.hwm - back), max(0, model.hwm - back) + span) for back, span in op[1]]
                assert await outbox.ack(ranges) == model.ack(ranges)
            elif op[0] == "send":
                sent = await outbox.pending(op[1])
                assert [m.seq for m in sent] == model.send(op[1])
                assert all(m.payload == _payload(model.rows[m.seq]) for m in sent)
            elif op[0] == "rewind":
                outbox.rewind()
                model.sent_upto = 0
            else:
                await outbox.close()
                outbox = Outbox(path, config, clock=lambda: now[0])
                await outbox.start()
                model.sent_upto, model.dropped, model.refused = 0, set(), 0
            stats = outbox.stats()
            assert stats.pending == len(model.rows)
            assert stats.pending_bytes == sum(model.rows.values()) <= model.max_bytes
            assert stats.highest_seq == model.hwm
            assert stats.in_flight == sum(1 for seq in model.rows if seq <= model.sent_upto)
            assert stats.dropped_oldest_ranges == SeqRanges.of(model.dropped).ranges
            assert stats.dropped_oldest == len(model.dropped)
            assert stats.dropped_newest == model.refused
            oldest = model.created[min(model.rows)] if model.rows else now[0]
            assert stats.oldest_age_s == now[0] - oldest
        assert [m.seq for m in await everything(outbox)] == sorted(model.rows)
    finally:
        await outbox.close()


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest"])
@settings(max_examples=40)
@given(ops=operations)
def test_pending_set_always_equals_a_simple_model(policy: str, ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_play(Path(tmp) / "outbox.db", policy, ops))
