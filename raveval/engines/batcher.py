"""A small async micro-batcher.

Callers `await submit(key, item, size, group)`; a worker task takes the oldest
waiting request and, of the others that share its key, first those in its
`group` (rows with the same few-shot prefix, which the engine then computes
once), then those closest to it in `size` (at most `max_batch` in all), runs
the synchronous `run(key, items) -> results` in one worker thread and resolves
each caller's future. Every row in flight is a candidate, so a batch holds
prompts of similar length (little padding) and the oldest request always goes
next (none waits forever). The
event loop stays free while a batch runs, so the next batch forms from
whatever arrives meanwhile; there is no timer, so no added latency. With
`workers` > 1, that many batches run at once, each in its own thread.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[Hashable, list], list],
        max_batch: int,
        thread_init: Callable[[], None] | None = None,
        workers: int = 1,
    ):
        self._run = run
        self.max_batch = max(1, max_batch)
        self.workers = max(1, workers)
        # A thread per worker: each runs one batch at a time, oldest request first.
        self._executor = ThreadPoolExecutor(self.workers, "raveval-batch", initializer=thread_init)
        self._pending: deque[tuple[Hashable, Any, asyncio.Future, int, Hashable]] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches_run = 0  # for tests and stats
        self.items_run = 0

    async def submit(self, key: Hashable, item: Any, size: int = 0, group: Hashable = None) -> Any:
        """`size`: the item's length (in tokens, best): batches group similar
        sizes. `group`: items that are best run together (the same prompt prefix)."""
        self._ensure_worker()
        fut = self._loop.create_future()
        self._pending.append((key, item, fut, size, group))
        self._wake.set()
        return await fut

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or all(w.done() for w in self._worker):
            # First use, or a new event loop (e.g. successive asyncio.run calls):
            # futures and events belong to one loop, so start afresh on this one.
            self._loop = loop
            self._pending = deque()
            self._wake = asyncio.Event()
            self._worker = [loop.create_task(self._work()) for _ in range(self.workers)]

    def _take(self) -> tuple[Hashable, list[tuple[Any, asyncio.Future]]]:
        live = [e for e in self._pending if not e[2].done()]  # skip callers that gave up (cancelled)
        if not live:
            self._pending = deque()
            return None, []
        key, _, _, size, group = live[0]
        same = [i for i, e in enumerate(live) if e[0] == key]
        # The oldest's group, then closest in size to the oldest (itself at distance 0); ties by age.
        chosen = set(sorted(same, key=lambda i: (live[i][4] != group, abs(live[i][3] - size)))[: self.max_batch])
        self._pending = deque(e for i, e in enumerate(live) if i not in chosen)
        return key, [(live[i][1], live[i][2]) for i in sorted(chosen)]

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, batch = self._take()
            if not batch:
                continue
            try:
                results = await self._loop.run_in_executor(
                    self._executor, self._run, key, [item for item, _ in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
            except asyncio.CancelledError:  # worker shut down: don't leave callers hanging
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as e:  # fail this batch's callers only; keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                self.batches_run += 1
                self.items_run += len(batch)
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)

    async def aclose(self) -> None:
        """Stop the worker (its waiting callers are cancelled) and the thread."""
        if self._loop is asyncio.get_running_loop():
            for w in self._worker:
                w.cancel()
        for _, _, fut, _, _ in self._pending:
            fut.cancel()
        await asyncio.to_thread(self._executor.shutdown)  # lets a running batch end

    def close(self) -> None:
        """Synchronous variant, for use outside the worker's event loop."""
        self._executor.shutdown(wait=True)
