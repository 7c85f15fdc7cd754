"""A small async micro-batcher.

Callers `await submit(key, item)`; a worker task takes the waiting requests
that share the first one's key (at most `max_batch`), runs the synchronous
`run(key, items) -> results` in one worker thread and resolves each caller's
future. The event loop stays free while a batch runs, so the next batch forms
from whatever arrives meanwhile; there is no timer, so no added latency.
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
    ):
        self._run = run
        self.max_batch = max(1, max_batch)
        # One thread: the model runs one batch at a time, in submission order.
        self._executor = ThreadPoolExecutor(1, "raveval-batch", initializer=thread_init)
        self._pending: deque[tuple[Hashable, Any, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches_run = 0  # for tests and stats
        self.items_run = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        self._ensure_worker()
        fut = self._loop.create_future()
        self._pending.append((key, item, fut))
        self._wake.set()
        return await fut

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # First use, or a new event loop (e.g. successive asyncio.run calls):
            # futures and events belong to one loop, so start afresh on this one.
            self._loop = loop
            self._pending = deque()
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())

    def _take(self) -> tuple[Hashable, list[tuple[Any, asyncio.Future]]]:
        key = self._pending[0][0]
        batch, rest = [], deque()
        while self._pending:
            entry = self._pending.popleft()
            if entry[2].done():  # caller gave up (cancelled)
                continue
            if entry[0] == key and len(batch) < self.max_batch:
                batch.append((entry[1], entry[2]))
            else:
                rest.append(entry)
        self._pending = rest
        return key, batch

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
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
        for _, _, fut in self._pending:
            fut.cancel()
        await asyncio.to_thread(self._executor.shutdown)  # lets a running batch end

    def close(self) -> None:
        """Synchronous variant, for use outside the worker's event loop."""
        self._executor.shutdown(wait=True)
