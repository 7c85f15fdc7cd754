"""as_finished: results in the order they finish; with every_s, gathered so that a
call's rows come back in fewer, larger messages."""
from __future__ import annotations

import asyncio
from contextlib import aclosing

from raveval.http.as_finished import as_finished


async def after(seconds: float, value):
    await asyncio.sleep(seconds)
    return value


def collect(coros, every_s: float = 0.0) -> list[list[tuple[int, object]]]:
    async def go():
        return [done async for done in as_finished(coros, every_s)]
    return asyncio.run(go())


def test_results_come_in_the_order_they_finish():
    assert collect([after(0.3, "slow"), after(0.0, "fast")]) == [[(1, "fast")], [(0, "slow")]]


def test_every_s_gathers_what_finishes_meanwhile_and_holds_nothing_longer():
    delays = [0.05, 0.1, 0.15, 0.8]
    lists = collect([after(d, i) for i, d in enumerate(delays)], every_s=0.4)
    # The first three finish within the first 0.4 s: one list; the last alone, when it finishes.
    assert [sorted(i for i, _ in got) for got in lists] == [[0, 1, 2], [3]]


def test_a_consumer_that_stops_cancels_the_rest():
    async def go():
        slow = asyncio.ensure_future(after(5, "never"))
        async with aclosing(as_finished([after(0.0, "fast"), slow])) as finished:
            async for _ in finished:
                break
        await asyncio.sleep(0)
        return slow

    # As the replica consumes it (aclosing): closing after the first list cancels the rest.
    assert asyncio.run(go()).cancelled()
