"""Results of concurrent coroutines in the order they finish, not the order given.

The replica streams a call's rows back this way, and the judge callers their
judgements: a row that finished is never held back by a slower one.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Sequence


async def as_finished(coros: Sequence[Awaitable]) -> AsyncIterator[list[tuple[int, object]]]:
    """Lists of (index in `coros`, result), each with every coroutine finished
    since the last one. A consumer that stops early cancels those still running."""
    running = {asyncio.ensure_future(c): i for i, c in enumerate(coros)}
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            yield [(running.pop(t), t.result()) for t in done]
    finally:
        for t in running:
            t.cancel()
