"""Micro-batching: concurrent requests share one model call.

A beam search over 8 prompts costs far less than 8 searches over one, so requests that arrive
while the model is busy (or within ``max_wait`` of the first one) are answered by one call of
``fn``. At most ``workers`` calls run at once: one per model process, so a call never waits
behind another for a process that is free. A plain ``fn`` runs on a thread of its own; a
coroutine function is awaited on the event loop (one that does not block it).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """``await submit(x)`` returns ``fn([..., x, ...])[position of x]``.

    Batches hold at most ``max_batch`` inputs; after the first input arrives the batcher waits
    at most ``max_wait`` seconds for more (0: only what is already queued). An exception from
    ``fn`` fails every request of that batch, not the batcher.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]] | Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        max_batch: int = 32,
        max_wait: float = 0.0,
        workers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn = fn
        self._awaited = inspect.iscoroutinefunction(fn)  # known once, not asked per batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.workers = workers
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._free: asyncio.Semaphore | None = None
        self._worker: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptrec-model")
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.workers)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, item: In) -> Out:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None and self._free is not None
        loop = asyncio.get_running_loop()
        while True:
            # A batch is gathered only once a worker is free to run it: until then requests
            # queue up, and the next batch takes all of them.
            await self._free.acquire()
            try:
                batch = [await self._queue.get()]
                deadline = loop.time() + self.max_wait
                while len(batch) < self.max_batch:
                    timeout = deadline - loop.time()
                    try:
                        batch.append(self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout))
                    except (asyncio.QueueEmpty, TimeoutError):
                        break
            except BaseException:
                self._free.release()
                raise
            live = [(x, f) for x, f in batch if not f.cancelled()]  # clients that went away
            if not live:
                self._free.release()
                continue
            call = loop.create_task(self._call(live))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, live: list[tuple[In, asyncio.Future[Out]]]) -> None:
        assert self._free is not None
        try:
            inputs = [x for x, _ in live]
            if self._awaited:
                results = await self.fn(inputs)
            else:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, inputs)
        except Exception as err:  # noqa: BLE001  (handed to each waiting request)
            for _, f in live:
                if not f.done():
                    f.set_exception(err)
            return
        finally:
            self._free.release()
        self.batches += 1
        self.items += len(live)
        for (_, f), r in zip(live, results):
            if not f.done():
                f.set_result(r)
