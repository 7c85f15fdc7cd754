"""Results on disk: per-row Parquet parts, row keys for resume, the summary files.

Each finished batch is written as its own Parquet file (written to a temp
name, then renamed), so a run that dies keeps every batch it completed, and
a re-run with the same work_dir skips the rows whose key is already there.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

PREDICTIONS = "predictions"
JUDGEMENTS = "judgements"  # the judge stage's rows, beside the predictions


class Store:
    def __init__(self, work_dir: str | Path, kind: str = PREDICTIONS):
        """`kind`: the folder of the rows, predictions/ or judgements/."""
        self.root = Path(work_dir)
        self.pred_dir = self.root / kind
        self._seq = 0
        # Names sort in write order across runs, so the newest row of a key wins.
        self._stamp = f"{time.time_ns():020d}-{os.getpid()}"

    def write_part(self, table: pa.Table) -> Path:
        self.pred_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = self.pred_dir / f"part-{self._stamp}-{self._seq:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def parts(self) -> list[Path]:
        return sorted(self.pred_dir.glob("part-*.parquet")) if self.pred_dir.is_dir() else []

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """All rows written so far; for a key written more than once, the latest."""
        parts = self.parts()
        if not parts:
            return None
        columns = None if columns is None else ["key", *(c for c in columns if c != "key")]
        tables = [pq.read_table(p, columns=columns) for p in parts]
        table = pa.concat_tables(tables, promote_options="permissive")
        keys = table.column("key").to_pylist()
        latest = {k: i for i, k in enumerate(keys)}
        if len(latest) == len(keys):
            return table
        return table.take(sorted(latest.values()))

    def finished_keys(self) -> set[str]:
        """Keys of rows that ended with a result (error rows are retried)."""
        table = self.read(columns=["key", "error"])
        if table is None:
            return set()
        ok = pc.is_null(table.column("error"))
        return set(table.filter(ok).column("key").to_pylist())

    def write_summary(self, summary: pa.Table, markdown: str) -> list[Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        paths = [self.root / "summary.parquet", self.root / "summary.csv", self.root / "summary.md"]
        pq.write_table(summary, paths[0])
        pacsv.write_csv(summary, paths[1])
        paths[2].write_text(markdown)
        return paths
