"""Outbox put rate: group commit (many producers, one transaction per batch) vs one transaction per message.

Anchor: the same file (same schema, WAL, same `synchronous`, exclusive lock), written by plain sqlite3
in a loop, one transaction per message (insert the row, update the seq high-water mark, commit): what
"commit every message before it counts as sent" costs without group commit. Ours: `Outbox.put` from
concurrent producers, each put returning once its row is committed. Shown beside them: ours with one
producer, where nothing can share a transaction (the cost of the writer thread hop).

The files go in --dir (default: the current directory, so a real disk rather than a tmpfs /tmp,
where fsync costs nothing).

    .venv/bin/python bench/bench_outbox.py [--messages 10000] [--size 256] [--producers 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from common import finish, table

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.outbox import Outbox

TOPIC = "ek/v1/bench/dev-01/telemetry/vibration"


def payload(size: int) -> bytes:
    return b"x" * size


async def ours(
    path: Path, config: OutboxConfig, messages: int, size: int, producers: int
) -> tuple[float, int]:
    body = payload(size - 20)

    async with Outbox(path, config) as outbox:

        async def producer(count: int) -> None:
            for _ in range(count):
                await outbox.put(TOPIC, lambda seq: body + b"%020d" % seq, stream="vibration")

        share, extra = divmod(messages, producers)
        start = time.perf_counter()
        await asyncio.gather(*(producer(share + (i < extra)) for i in range(producers)))
        elapsed = time.perf_counter() - start
        stats = outbox.stats()
        if stats.committed != messages:
            raise SystemExit(f"committed {stats.committed} of {messages}")
        return elapsed, stats.transactions


def anchor(path: Path, synchronous: str, messages: int, size: int) -> float:
    asyncio.run(_create(path))  # the outbox's own schema and header
    body = payload(size - 20)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    start = time.perf_counter()
    for seq in range(1, messages + 1):
        data = body + b"%020d" % seq
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
            (seq, TOPIC, "vibration", time.time(), len(data) + len(TOPIC), data),
        )
        db.execute("INSERT OR REPLACE INTO meta VALUES ('hwm', ?)", (seq,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


async def _create(path: Path) -> None:
    async with Outbox(path, OutboxConfig()):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=256, help="payload bytes per message (>= 20)")
    parser.add_argument("--producers", type=int, default=64, help="concurrent put callers (ours)")
    parser.add_argument("--sequential", type=int, default=2000, help="messages for the one-producer row")
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    rows: list[list[object]] = []
    figures: dict[str, object] = {
        "messages": args.messages,
        "size": args.size,
        "producers": args.producers,
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-outbox-") as tmp:
        for mode in ("FULL", "NORMAL"):
            config = OutboxConfig(synchronous=mode, max_bytes=1 << 36)
            base = anchor(Path(tmp) / f"anchor-{mode}.db", mode, args.messages, args.size)
            group, transactions = asyncio.run(
                ours(Path(tmp) / f"ours-{mode}.db", config, args.messages, args.size, args.producers)
            )
            single, single_tx = asyncio.run(
                ours(Path(tmp) / f"single-{mode}.db", config, args.sequential, args.size, 1)
            )
            base_rate = args.messages / base
            group_rate = args.messages / group
            single_rate = args.sequential / single
            rows += [
                [
                    f"{mode}: one transaction per message (anchor)",
                    args.messages,
                    args.messages,
                    base_rate,
                    1.0,
                ],
                [
                    f"{mode}: outbox, {args.producers} producers",
                    args.messages,
                    transactions,
                    group_rate,
                    group_rate / base_rate,
                ],
                [
                    f"{mode}: outbox, 1 producer",
                    args.sequential,
                    single_tx,
                    single_rate,
                    single_rate / base_rate,
                ],
            ]
            key = mode.lower()
            figures |= {
                f"{key}_anchor_per_s": round(base_rate),
                f"{key}_ours_per_s": round(group_rate),
                f"{key}_ratio": round(group_rate / base_rate, 2),
                f"{key}_mean_batch": round(args.messages / transactions, 1),
                f"{key}_one_producer_per_s": round(single_rate),
            }
    table(
        f"durable puts of {args.size}-byte messages, WAL, in {args.dir}",
        ["path", "messages", "transactions", "puts/s", "ratio"],
        rows,
    )
    finish("outbox", figures)


if __name__ == "__main__":
    main()
