"""One Stage type for every Ray Data stage of a run (model calls, judge calls).

A stage is a pool of caller actors that take no CPU (they only wait on Serve
or on HTTP), one call per batch of rows. Each caller declares the columns it
reads (`inputs`) and the columns it appends (`outputs`, an Arrow schema), as
Ray Data LLM's stage UDFs declare their expected input keys; the stage checks
both: the input table before anything is sent, and every batch that comes
back. A caller returns one result dict per row; a row that fails becomes a
result with `error` set, never a failed batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pyarrow as pa

from raveval.config.schema import StreamConfig


class StageError(RuntimeError):
    """A stage's input or output does not have the columns it declares."""


class Caller:
    """Base of a stage's caller actor: `process` gets the declared input columns
    of a batch as dicts and returns one result dict per row."""

    inputs: ClassVar[list[str]]
    outputs: ClassVar[pa.Schema]

    async def process(self, rows: list[dict]) -> list[dict]:
        raise NotImplementedError

    async def __call__(self, batch: pa.Table) -> pa.Table:
        results = await self.process(batch.select(self.inputs).to_pylist())
        if len(results) != batch.num_rows:
            raise StageError(f"{type(self).__name__}: {len(results)} results for {batch.num_rows} rows")
        return append_results(batch, results, self.outputs)


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

    def run(self, table: pa.Table) -> Iterator[pa.Table]:
        """Stream the rows through the caller pool; yield each finished batch."""
        import ray
        from ray.data import ActorPoolStrategy

        self.check_input(table)
        n, s = table.num_rows, self.settings
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
            fn_constructor_kwargs=self.caller_args,
            batch_size=rows,
            batch_format="pyarrow",
            num_cpus=0,
            compute=ActorPoolStrategy(size=pool_size(n, s), max_concurrent_calls_per_actor=s.calls_per_caller),
        )
        ds.set_name(self.name)  # what the dashboard shows for this stream
        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        try:
            for batch in batches:
                self.check_output(batch)
                yield batch
        finally:
            # Stop Ray Data's executor now, also when the consumer stops early
            # (an error, a signal): its threads must not outlive Ray's shutdown.
            close = getattr(batches, "close", None)
            if close is not None:
                close()
