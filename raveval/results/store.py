"""Results in a work_dir: per-row Parquet parts, row keys for resume, the summary files.

Each finished batch is written as its own Parquet file (appearing whole or
not at all, see WorkDir), so a run that dies keeps every batch it completed,
and a re-run with the same work_dir skips the rows whose key is already there.
The work_dir may be a local folder or a URI (s3://, gs://, hdfs://, file://).
"""
from __future__ import annotations

import io
import os
import posixpath
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from raveval.results.workdir import WorkDir

PREDICTIONS = "predictions"
JUDGEMENTS = "judgements"  # the judge stage's rows, beside the predictions
SUMMARY_FILES = ("summary.parquet", "summary.csv", "summary.md")


class Store:
    def __init__(self, work_dir: str | os.PathLike | WorkDir, kind: str = PREDICTIONS, log=print,
                 set_aside: bool = True):
        """`kind`: the folder of the rows, predictions/ or judgements/. A part that is
        not readable Parquet is renamed `*.corrupt` (`set_aside`; else only skipped),
        named through `log`, and its rows are computed again."""
        self.work = work_dir if isinstance(work_dir, WorkDir) else WorkDir(work_dir)
        self.kind = kind
        self.log = log
        self.set_aside = set_aside
        self._seq = 0
        # Names sort in write order across runs, so the newest row of a key wins.
        self._stamp = f"{time.time_ns():020d}-{os.getpid()}"

    def write_part(self, table: pa.Table) -> str:
        self._seq += 1
        name = f"part-{self._stamp}-{self._seq:06d}.parquet"
        self.work.write_with(lambda path: pq.write_table(table, path, filesystem=self.work.fs), self.kind, name)
        return self.work.path(self.kind, name)

    def parts(self) -> list[str]:
        return [self.work.path(self.kind, n) for n in self.work.list(self.kind, "part-", ".parquet")]

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """All rows written so far; for a key written more than once, the latest."""
        parts = self.parts()
        if not parts:
            return None
        columns = None if columns is None else ["key", *(c for c in columns if c != "key")]
        tables = [t for t in (self._read_part(p, columns) for p in parts) if t is not None]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="permissive")
        keys = table.column("key").to_pylist()
        latest = {k: i for i, k in enumerate(keys)}
        if len(latest) == len(keys):
            return table
        return table.take(sorted(latest.values()))

    def _read_part(self, path: str, columns: list[str] | None) -> pa.Table | None:
        try:
            return pq.read_table(path, columns=columns, filesystem=self.work.fs)
        except pa.ArrowInvalid as e:  # not Parquet (cut short, overwritten): storage errors are OSErrors
            name = posixpath.basename(path)
            if self.set_aside:
                self.work.move(f"{self.kind}/{name}", f"{self.kind}/{name}.corrupt")
                self.log(f"raveval: {self.work}/{self.kind}/{name} is not readable Parquet ({str(e)[:120]}); "
                         f"set aside as {name}.corrupt, its rows are computed again")
            else:
                self.log(f"raveval: {self.work}/{self.kind}/{name} is not readable Parquet ({str(e)[:120]}); "
                         f"skipped (a run sets it aside and computes its rows again)")
            return None

    def read_summary(self) -> pa.Table | None:
        """The summary of the last run that wrote one, if it can be read."""
        try:
            return pq.read_table(self.work.path(SUMMARY_FILES[0]), filesystem=self.work.fs)
        except (OSError, pa.ArrowInvalid):  # none yet, or not readable: nothing to keep
            return None

    def finished_keys(self) -> set[str]:
        """Keys of rows that ended with a result (error rows are retried)."""
        table = self.read(columns=["key", "error"])
        if table is None:
            return set()
        ok = pc.is_null(table.column("error"))
        return set(table.filter(ok).column("key").to_pylist())

    def write_summary(self, summary: pa.Table, markdown: str) -> list[str]:
        csv = io.BytesIO()
        pacsv.write_csv(summary, csv)
        parquet, csv_name, md = SUMMARY_FILES
        self.work.write_with(lambda path: pq.write_table(summary, path, filesystem=self.work.fs), parquet)
        self.work.write_bytes(csv.getvalue(), csv_name)
        self.work.write_bytes(markdown.encode(), md)
        return [f"{self.work}/{n}" for n in SUMMARY_FILES]
