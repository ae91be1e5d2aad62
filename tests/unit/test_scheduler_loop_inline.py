"""`await infer` runs a cheap request on the event loop's own thread when a worker would take it at
once; anything else (an unmeasured or costly model, a busy pool, the setting off) goes to a worker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgekernel.device.scheduler import Scheduler
from tests.unit.scheduler_helpers import GATE, TestExecutor, config, tagged, wait_until


def run_threads(executor: TestExecutor) -> list[str]:
    names: list[str] = []
    executor.on_run = lambda model, tags: names.append(threading.current_thread().name)
    return names


async def infer_n(scheduler: Scheduler, model: str, count: int) -> None:
    for tag in range(count):
        outputs = await scheduler.infer("a", model, tagged(tag))
        assert outputs[0].item() == 2 * tag


def test_a_measured_cheap_model_runs_on_the_loop() -> None:
    executor = TestExecutor()
    names = run_threads(executor)
    with Scheduler(config(), executor, workers=1) as scheduler:
        asyncio.run(infer_n(scheduler, "m", 5))
    loop_thread = threading.main_thread().name
    assert names[0].startswith("ek-scheduler")  # not measured yet: a worker runs and times it
    assert names[1:] == [loop_thread] * 4
    assert scheduler.stats().total.completed == 5


@pytest.mark.parametrize("setting", [0.0, 1.0])
def test_off_or_too_costly_goes_to_a_worker(setting: float) -> None:
    executor = TestExecutor(cost={"m": 0.005})  # 5 ms a run, over 1 ms
    names = run_threads(executor)
    with Scheduler(config(loop_inline_ms=setting), executor, workers=1) as scheduler:
        asyncio.run(infer_n(scheduler, "m", 3))
    assert all(name.startswith("ek-scheduler") for name in names)


def test_a_busy_pool_or_a_model_not_ready_goes_to_a_worker() -> None:
    executor = TestExecutor()
    names = run_threads(executor)
    with Scheduler(config(), executor, workers=1) as scheduler:

        async def main() -> None:
            await infer_n(scheduler, "m", 2)  # measured, cheap
            gated = scheduler.submit("a", GATE, tagged(0))  # takes the only worker
            wait_until(executor.gated.is_set)
            names.clear()
            waiting = asyncio.ensure_future(scheduler.infer("a", "m", tagged(3)))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # queued behind the gate, the loop free meanwhile
            executor.gate.set()
            assert (await waiting)[0].item() == 6
            assert gated.result(5)[0].item() == 0

        asyncio.run(main())
    assert names
    assert all(name.startswith("ek-scheduler") for name in names)


def test_the_loop_still_turns_between_inline_requests() -> None:
    executor = TestExecutor()
    with Scheduler(config(), executor, workers=1) as scheduler:

        async def main() -> int:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            await infer_n(scheduler, "m", 200)  # a tight loop of inline requests
            task.cancel()
            return ticks

        assert asyncio.run(main()) >= 150
