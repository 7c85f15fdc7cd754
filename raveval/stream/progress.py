"""Live progress of a stream: one line per dataset with rows done / total, rows/s,
ETA and error rows.

In a terminal the lines are tqdm bars redrawn in place (on stderr, beside the
run's own lines on stdout). Elsewhere (a log file, `ray job logs`) a plain line
per dataset is written every `every_s` seconds and once at the end, so logs stay
short and readable. Ray's own progress output is off unless `-v` (stream.cluster).
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc


class Progress:
    def __init__(self, what: str, totals: dict[str, int], log=print, every_s: float = 10.0,
                 tty: Optional[bool] = None):
        """`what`: the stream ("model", "judge"); `totals`: rows per dataset (more may
        be added as they become known: see `add`)."""
        self.what, self.log, self.every_s = what, log, every_s
        self.totals: Counter = Counter()
        self.done: Counter = Counter()
        self.errors: Counter = Counter()
        self._last = time.monotonic()
        self._first: Optional[tuple[float, int]] = None  # (time, rows) of the first batch: rates start there
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bars = {}
        self.add(totals)

    def add(self, totals: dict[str, int]) -> None:
        """More rows to come: the later turns of a chat, judgements of new answers."""
        self.totals.update(totals)
        if not self.tty:
            return
        from tqdm import tqdm

        # A terminal that reports no size (a bare pseudo-terminal) still gets 100 x 24.
        # (tqdm hides the bars below a terminal's last line: a size of 0 x 0 would hide all.)
        size = shutil.get_terminal_size((100, 24))
        cols, rows = size.columns or 100, max(size.lines, len(self.totals) + 1)
        for d in totals:
            if d in self._bars:
                self._bars[d].total = self.totals[d]
                self._bars[d].refresh()
            else:
                self._bars[d] = tqdm(total=self.totals[d], desc=f"{self.what} {d}", unit="row", ncols=cols,
                                     nrows=rows, leave=True, file=sys.stderr, postfix={"errors": 0})

    def update(self, batch: pa.Table) -> None:
        """Count a finished batch (its `dataset` and `error` columns)."""
        if self._first is None:
            self._first = (time.monotonic(), batch.num_rows)
            self._last = self._first[0]  # the first plain line comes every_s after the first batch
        datasets = batch.column("dataset").to_pylist()
        failed = pc.invert(pc.is_null(batch.column("error"))).to_pylist()
        for d, bad in zip(datasets, failed):
            self.done[d] += 1
            self.errors[d] += bool(bad)
        for d in set(datasets):
            bar = self._bars.get(d)
            if bar is not None:
                bar.update(self.done[d] - bar.n)
                bar.set_postfix(errors=self.errors[d], refresh=True)
        if not self.tty and time.monotonic() - self._last >= self.every_s:
            self._say()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if not self.tty:
            self._say()

    def line(self, d: str) -> str:
        done, total = self.done[d], self.totals[d]
        rate = self.rate()
        speed = f"{rate:.1f} rows/s" if rate else "- rows/s"
        eta = "0s" if done >= total else (f"{(total - done) / rate:.0f}s" if rate else "?")
        return (f"{self.what} {d}: {done}/{total} rows ({100 * done / max(total, 1):.0f}%), {speed}, "
                f"ETA {eta}, {self.errors[d]} errors")

    def rate(self) -> Optional[float]:
        """Rows per second of the whole stream since its first batch (start-up is not
        throughput); None until there is a span to measure."""
        if self._first is None or time.monotonic() - self._first[0] <= 0.5:
            return None
        return (sum(self.done.values()) - self._first[1]) / (time.monotonic() - self._first[0])

    def _say(self) -> None:
        self._last = time.monotonic()
        for d in self.totals:
            self.log(self.line(d))
