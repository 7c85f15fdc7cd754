"""The run's sink: where callers send the rows that finished while their call
still runs (stream.stage), until the driver takes them.

One small actor per run, on the driver's node, holding tables by channel (one
channel per stream). The driver takes everything every TAKE_S, and a stream's
own rows once more when its last call has returned: by then every call of the
stream has sent its rows, so nothing reaches the sink after.
"""
from __future__ import annotations

import asyncio

import pyarrow as pa

# Seconds between the driver's takes (each take becomes one written part per stream).
TAKE_S = 1.0
# Longest wait for the sink to answer a put (a caller's) or a take (the driver's).
SINK_TIMEOUT_S = 60.0


class Sink:
    def __init__(self):
        self.parts: list[tuple[int, bytes]] = []

    async def put(self, channel: int, table: bytes) -> None:
        self.parts.append((channel, table))

    async def take(self, channel: int | None = None) -> list[tuple[int, bytes]]:
        """The tables of `channel` (of every channel: None) sent since the last take."""
        got = [p for p in self.parts if channel is None or p[0] == channel]
        self.parts = [p for p in self.parts if channel is not None and p[0] != channel]
        return got


def start_sink():
    """A sink actor that takes no CPU, on this (the driver's) node.

    Pinned (not soft): a soft affinity sends it to another node whenever the
    driver's CPUs are busy, and losing that node would lose the rows it holds.
    On the driver's node it dies only with the driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(Sink).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


def _no_answer(what: str) -> TimeoutError:
    return TimeoutError(f"the run's sink (early rows) did not answer a {what} in {SINK_TIMEOUT_S:.0f}s")


def _to_bytes(table: pa.Table) -> bytes:
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, table.schema) as writer:
        writer.write_table(table)
    return out.getvalue().to_pybytes()


async def put(sink, channel: int, table: pa.Table) -> None:
    """Send `table` to the sink (from a caller)."""
    try:
        await asyncio.wait_for(sink.put.remote(channel, _to_bytes(table)), SINK_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise _no_answer("put") from None


def take(sink, channel: int | None = None) -> list[tuple[int, pa.Table]]:
    """The tables sent since the last take (in the driver)."""
    import ray

    try:
        got = ray.get(sink.take.remote(channel), timeout=SINK_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise _no_answer("take") from None
    return [(c, pa.ipc.open_stream(b).read_all()) for c, b in got]
