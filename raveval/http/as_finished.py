"""Results of concurrent coroutines in the order they finish, not the order given.

The replica streams a call's rows back this way, and the judge callers their
judgements: a row that finished is never held back by a slower one.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Sequence


async def as_finished(coros: Sequence[Awaitable], every_s: float = 0.0) -> AsyncIterator[list[tuple[int, object]]]:
    """Lists of (index in `coros`, result), each with every coroutine finished
    since the last one, at most one list per `every_s` seconds (each list then
    waits that long after the last for the rows finishing meanwhile). A consumer
    that stops early cancels those still running."""
    running = {asyncio.ensure_future(c): i for i, c in enumerate(coros)}
    last = time.monotonic()
    try:
        while running:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            wait = last + every_s - time.monotonic()
            if wait > 0 and len(running) > 1:
                await asyncio.wait(running, timeout=wait, return_when=asyncio.ALL_COMPLETED)
            done = [t for t in running if t.done()]
            last = time.monotonic()
            yield [(running.pop(t), t.result()) for t in done]
    finally:
        for t in running:
            t.cancel()
