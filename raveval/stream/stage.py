"""One Stage type for every Ray Data stage of a run (model calls, judge calls).

A stage is a pool of caller actors that take no CPU (they only wait on Serve
or on HTTP), one call per batch of rows. Each caller declares the columns it
reads (`inputs`) and the columns it appends (`outputs`, an Arrow schema), as
Ray Data LLM's stage UDFs declare their expected input keys; the stage checks
both: the input table before anything is sent, and every batch that comes
back. A caller yields its rows' result dicts as they finish; a row that
fails becomes a result with `error` set, never a failed batch.

Rows that finish while their call still runs are not held until it ends:
every FLUSH_S each caller actor sends those of all its calls to the run's
sink (stream.sink) in one message, which the driver empties as it goes; each
call returns the rest. A short call (all rows back within FLUSH_S) sends
nothing to the sink. Each row carries its index in the stream (ROW_INDEX),
so rows sent twice (a caller that died after sending some, its batch
computed again) are kept once.
"""
from __future__ import annotations

import asyncio
import math
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, ClassVar, Iterator

import pyarrow as pa

from raveval.config.schema import StreamConfig
from raveval.stream.sink import put


# Seconds between a call's sends of its finished rows to the sink.
FLUSH_S = 0.5
# The column that numbers a stream's rows (added by Stage.run, dropped by stream.waves).
ROW_INDEX = "_row"


class StageError(RuntimeError):
    """A stage's input or output does not have the columns it declares."""


class Caller:
    """Base of a stage's caller actor: `process` gets the declared input columns
    of a batch as dicts and yields (index, result dict) pairs as rows finish."""

    inputs: ClassVar[list[str]]
    outputs: ClassVar[pa.Schema]

    def __init__(self, early: tuple | None = None):
        """`early`: (sink actor, channel) that takes the rows finished before their call."""
        self.sink, self.channel = early or (None, None)
        self.calls: set[_Call] = set()  # the calls in flight, whose finished rows the flusher sends
        self.flusher: asyncio.Future | None = None  # one for the actor: one send per FLUSH_S for all its calls
        self.lock = asyncio.Lock()  # a call ends between sends, never during one
        self.flush_error: BaseException | None = None

    def process(self, rows: list[dict]) -> AsyncIterator[list[tuple[int, dict]]]:
        raise NotImplementedError

    async def __call__(self, batch: pa.Table) -> pa.Table:
        call = _Call(batch)
        if self.sink is not None:
            if self.flusher is None:  # started on the actor's event loop, with its first call
                self.flusher = asyncio.ensure_future(self._flush())
            self.calls.add(call)
        try:
            async with aclosing(self.process(batch.select(self.inputs).to_pylist())) as stream:
                async for finished in stream:
                    for i, res in finished:
                        call.results[i] = res
                        call.unsent.append(i)
        finally:
            if self.sink is not None:
                async with self.lock:  # a send under way completes: its rows are the sink's, not the return's
                    self.calls.discard(call)
        if self.flush_error is not None:  # rows this call finished may be lost with that send
            raise self.flush_error
        if len(call.results) != batch.num_rows:
            raise StageError(f"{type(self).__name__}: {len(call.results)} results for {batch.num_rows} rows")
        return self._table(batch, call.unsent, call.results)

    async def _flush(self) -> None:
        """Every FLUSH_S, the rows finished in every call in flight, as one table to the sink."""
        try:
            while True:
                await asyncio.sleep(FLUSH_S)
                async with self.lock:
                    tables = []
                    for call in self.calls:
                        if call.unsent:
                            rows, call.unsent = call.unsent, []
                            tables.append(self._table(call.batch, rows, call.results))
                    if tables:
                        await put(self.sink, self.channel, pa.concat_tables(tables))
        except Exception as e:  # every call in flight fails with it (their rows may be in that send)
            self.flush_error = e

    def _table(self, batch: pa.Table, rows: list[int], results: dict[int, dict]) -> pa.Table:
        return append_results(batch.take(pa.array(rows, pa.int64())), [results[i] for i in rows], self.outputs)


class _Call:
    """One call of a caller: its batch, the results so far, the finished rows not sent yet."""

    def __init__(self, batch: pa.Table):
        self.batch = batch
        self.results: dict[int, dict] = {}
        self.unsent: list[int] = []


def append_results(table: pa.Table, results: list[dict], schema: pa.Schema) -> pa.Table:
    """`table` with one column per field of `schema`, taken from the result dicts (missing: null)."""
    for f in schema:
        table = table.append_column(f, pa.array([r.get(f.name) for r in results], type=f.type))
    return table


def pool_size(n_rows: int, settings: StreamConfig) -> int:
    """Caller actors for a stream: no more than its batches, since an idle caller only costs start-up."""
    return max(1, min(settings.callers, math.ceil(n_rows / settings.batch_rows)))


def batch_size(n_rows: int, settings: StreamConfig) -> int:
    """Rows per call: batch_rows, or fewer for a short stream, so that its rows spread
    over every call in flight and come back (and are written) as each call finishes."""
    slots = pool_size(n_rows, settings) * settings.calls_per_caller
    return max(1, min(settings.batch_rows, math.ceil(n_rows / slots)))


@dataclass
class Stage:
    name: str                 # what Ray Data shows for this stage
    caller: type[Caller]
    caller_args: dict[str, Any]
    settings: StreamConfig

    def check_input(self, table: pa.Table) -> None:
        missing = [c for c in self.caller.inputs if c not in table.column_names]
        if missing:
            raise StageError(f"stage {self.name}: input lacks column(s) {missing}")

    def check_output(self, batch: pa.Table) -> None:
        for f in self.caller.outputs:
            got = batch.schema.field(f.name).type if f.name in batch.column_names else None
            if got != f.type:
                raise StageError(f"stage {self.name}: output column {f.name} is {got}, declared {f.type}")

    def run(self, table: pa.Table, early: tuple, streams: set | None = None) -> Iterator[pa.Table]:
        """Stream the rows through the caller pool; yield what each call returns.
        `early`: (sink, channel) where the calls send the rows that finish before
        them. Rows carry ROW_INDEX both ways (stream.waves merges them). `streams`
        gets the Ray Data dataset's id (stream.waves finds its executor by it)."""
        import ray
        from ray.data import ActorPoolStrategy

        self.check_input(table)
        n, s = table.num_rows, self.settings
        table = table.append_column(ROW_INDEX, pa.array(range(n), pa.int64()))
        rows = batch_size(n, s)
        # Blocks of one batch each (Ray Data's default block count is far larger than the pool needs).
        n_blocks = max(1, min(math.ceil(n / rows), 2000))
        step = math.ceil(n / n_blocks)
        blocks = [table.slice(i, step) for i in range(0, n, step)]
        # from_blocks takes the blocks' metadata here, in the driver: from_arrow would
        # run a task per block that needs a CPU, which replicas holding every CPU
        # never free (the stream then hangs before its first row).
        ds = ray.data.from_blocks(blocks).map_batches(
            self.caller,
            fn_constructor_kwargs={**self.caller_args, "early": early},
            batch_size=rows,
            batch_format="pyarrow",
            num_cpus=0,
            compute=ActorPoolStrategy(size=pool_size(n, s), max_concurrent_calls_per_actor=s.calls_per_caller),
        )
        ds.set_name(self.name)  # what the dashboard shows for this stream
        if streams is not None:
            streams.add(ds.get_dataset_id().rsplit("_", 1)[0])  # less the execution's index
        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        try:
            yield from batches
        finally:
            # Stop Ray Data's executor now, also when the consumer stops early
            # (an error, a signal): its threads must not outlive Ray's shutdown.
            close = getattr(batches, "close", None)
            if close is not None:
                close()
