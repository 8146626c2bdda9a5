"""The micro-batcher: queued requests share a call, calls run on as many workers as asked, and a
failing call fails its own requests only."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from promptrec.serving.batching import MicroBatcher


class Recorder:
    """A batch function that remembers its batches and how many calls overlapped."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def __call__(self, xs):
        with self.lock:
            self.batches.append(list(xs))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return [x * 10 for x in xs]


async def run(batcher: MicroBatcher, inputs: list[int]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_requests_queued_while_busy_share_one_call() -> None:
    fn = Recorder()

    async def scenario() -> list:
        batcher = MicroBatcher(fn, max_batch=32)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first call is running now
        rest = await asyncio.gather(*(batcher.submit(x) for x in range(1, 9)))
        results = [await first, *rest]
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [x * 10 for x in range(9)]
    # The first request starts a call at once; the eight that queue behind it go together.
    assert fn.batches == [[0], list(range(1, 9))]


def test_max_batch_bounds_a_call() -> None:
    fn = Recorder(seconds=0.01)
    asyncio.run(run(MicroBatcher(fn, max_batch=3), list(range(8))))
    assert max(len(b) for b in fn.batches) == 3 and sorted(x for b in fn.batches for x in b) == list(range(8))


def test_workers_run_calls_side_by_side() -> None:
    one, two = Recorder(), Recorder()
    asyncio.run(run(MicroBatcher(one, max_batch=1, workers=1), list(range(4))))
    asyncio.run(run(MicroBatcher(two, max_batch=1, workers=2), list(range(4))))
    assert one.most_running == 1 and two.most_running == 2


def test_a_failing_call_fails_only_its_own_requests() -> None:
    fn = Recorder(seconds=0.01)
    results = asyncio.run(run(MicroBatcher(fn, max_batch=1), [1, -1, 2]))
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], ValueError)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(Recorder(), workers=0)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0)


def test_a_coroutine_function_is_awaited_on_the_loop_with_the_same_batching() -> None:
    batches: list[list[int]] = []
    loop_threads: set[int] = set()

    async def fn(xs):
        loop_threads.add(threading.get_ident())
        batches.append(list(xs))
        await asyncio.sleep(0.05)
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return [x * 10 for x in xs]

    async def scenario() -> list:
        batcher = MicroBatcher(fn, max_batch=32)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.01)  # the first call is running: the next 8 queue up
            rest = [asyncio.ensure_future(batcher.submit(x)) for x in range(1, 9)]
            results = await asyncio.gather(first, *rest)
            failed = await asyncio.gather(batcher.submit(-1), return_exceptions=True)
            return results + failed + [await batcher.submit(9)], threading.get_ident()
        finally:
            await batcher.stop()

    results, main = asyncio.run(scenario())
    assert results[:9] == [x * 10 for x in range(9)]
    assert isinstance(results[9], ValueError) and results[10] == 90  # a failed call, then the batcher goes on
    assert batches == [[0], list(range(1, 9)), [-1], [9]]
    assert loop_threads == {main}  # no thread: awaited on the event loop
