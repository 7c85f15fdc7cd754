"""Rows are written as they finish, not when their whole call returns, so a
crash loses at most the rows still in the engine. The instant engine with
`token_s` makes each row take as long as it has words; every row goes in one
Serve call, so before this change nothing was written until the slowest row
was done."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from raveval.results.store import Store

N = 24


def write_run(tmp_path: Path, token_s: float) -> Path:
    """A gen dataset whose row i has 3 * (i + 1) words; one call of all N rows."""
    data = tmp_path / "slow.jsonl"
    data.write_text("".join(json.dumps({"question": " ".join(["word"] * 3 * (i + 1)), "gold": "x"}) + "\n"
                            for i in range(N)))
    path = tmp_path / "run.yaml"
    path.write_text(f"""defaults:
  - base
  - model: instant
  - _self_
model: {{token_s: {token_s}}}
datasets:
  slow:
    loader: generic
    path: {data}
    mode: gen
    answer: text
    generation: {{max_new_tokens: 2000}}
model_stream: {{batch_rows: 64, callers: 1, calls_per_caller: 1}}
work_dir: {tmp_path / 'work'}
""")
    return path


def parts(work: Path) -> list[tuple[float, int]]:
    """(write time, rows) of each prediction part, oldest first."""
    folder = work / "predictions"
    return sorted((os.path.getmtime(p), pq.read_metadata(p).num_rows) for p in folder.glob("part-*.parquet"))


def test_rows_are_written_as_they_finish_within_one_call(ray_local, tmp_path):
    from raveval.run.config import load_config
    from raveval.run.evaluate import run

    cfg = load_config(str(write_run(tmp_path, token_s=0.04)))  # rows take 0.3 s to 5.8 s
    result = run(cfg, log=lambda *_: None)
    assert not result.failed
    rows = Store(tmp_path / "work").read().to_pylist()
    assert sorted(Counter(r["key"] for r in rows).values()) == [1] * N  # each row once
    assert all(r["error"] is None for r in rows)
    written = parts(tmp_path / "work")
    # The call's rows came out over several seconds, about one part a second.
    assert len(written) >= 3, written
    assert written[-1][0] - written[0][0] >= 2.5, written


def _ray_pids(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_a_killed_driver_loses_only_the_rows_in_the_engine(ray_local, tmp_path):
    """`raveval run` killed with SIGKILL mid-call: the rows that had finished are
    on disk, and the next run computes only the others."""
    path = write_run(tmp_path, token_s=0.12)  # rows take 0.9 s to 17.5 s
    tmp = tempfile.mkdtemp(prefix="rvkill-", dir="/tmp")  # this run's Ray lives under it
    proc = subprocess.Popen([sys.executable, "-m", "raveval", "run", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_TMPDIR": tmp})
    try:
        deadline = time.monotonic() + 240
        while sum(n for _, n in parts(tmp_path / "work")) < N // 4 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(3)
        for pid in _ray_pids(tmp):  # the killed driver's Ray, if it outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    kept = Store(tmp_path / "work").read().to_pylist()
    assert N // 4 <= len(kept) < N, len(kept)  # written before the call ended, and the kill came mid-call
    assert all(r["error"] is None for r in kept)

    from raveval.run.config import load_config
    from raveval.run.evaluate import run

    result = run(load_config(str(path)), log=lambda *_: None)
    assert not result.failed
    assert result.stats["reused"] == len(kept) and result.stats["rows"] == N - len(kept), result.stats
    rows = Store(tmp_path / "work").read().to_pylist()
    assert sorted(Counter(r["key"] for r in rows).values()) == [1] * N


def test_rows_sent_again_by_a_retried_call_are_kept_once(ray_local, tmp_path):
    """A caller that dies after sending half its rows to the sink: Ray Data runs
    the batch again on a new caller, which sends every row; each row is delivered once."""
    import asyncio

    import pyarrow as pa

    from raveval.config.schema import StreamConfig
    from raveval.stream.stage import Caller, Stage
    from raveval.stream.waves import Waves

    marker = str(tmp_path / "died-once")

    class DiesOnce(Caller):  # defined here: Ray pickles it by value for the workers
        inputs = ["x"]
        outputs = pa.schema([("y", pa.int64()), ("error", pa.string())])

        def __init__(self, marker: str, early=None):
            super().__init__(early)
            self.marker = marker

        async def process(self, rows):
            half = len(rows) // 2
            yield [(i, {"y": 2 * r["x"]}) for i, r in enumerate(rows[:half])]
            await asyncio.sleep(2.0)  # the first half goes to the sink meanwhile
            if not os.path.exists(self.marker):
                Path(self.marker).touch()
                os._exit(1)  # the caller's process dies mid-call
            yield [(half + i, {"y": 2 * r["x"]}) for i, r in enumerate(rows[half:])]

    waves = Waves()
    stage = Stage("dies-once", DiesOnce, {"marker": marker}, StreamConfig(batch_rows=10, callers=1, calls_per_caller=1))
    waves.start("t", stage, pa.table({"x": list(range(10))}))
    got, deadline = [], time.monotonic() + 180
    try:
        while waves.running and time.monotonic() < deadline:
            event = waves.next(1.0)
            if event is not None and event.error is not None:
                raise event.error
            if event is not None and event.batch is not None:
                assert "_row" not in event.batch.column_names
                got += event.batch.to_pylist()
    finally:
        waves.stop()
    assert os.path.exists(marker), "the caller never died: nothing was sent twice"
    assert sorted(r["x"] for r in got) == list(range(10)) and all(r["y"] == 2 * r["x"] for r in got)


def test_a_stop_ends_its_own_streams_at_once_and_spares_another_runs(ray_local):
    """Two runs' waves in one process (a multi-model run), their stages named alike:
    stopping one ends its wave's thread within a second, its stream shut down while
    its call still runs (Ray goes next: no thread may be inside Ray then), and the
    other run's wave goes on and delivers every row."""
    import asyncio

    import pyarrow as pa

    from raveval.config.schema import StreamConfig
    from raveval.stream.stage import Caller, Stage
    from raveval.stream.waves import Waves

    class Slow(Caller):  # defined here: Ray pickles it by value for the workers
        inputs = ["x"]
        outputs = pa.schema([("y", pa.int64()), ("error", pa.string())])

        def __init__(self, seconds: float, early=None):
            super().__init__(early)
            self.seconds = seconds

        async def process(self, rows):
            await asyncio.sleep(self.seconds)
            yield [(i, {"y": 2 * r["x"]}) for i, r in enumerate(rows)]

    settings = StreamConfig(batch_rows=10, callers=1, calls_per_caller=1)
    stopped, spared = Waves(), Waves()
    doomed = stopped.start("t", Stage("judge", Slow, {"seconds": 60.0}, settings), pa.table({"x": list(range(10))}))
    spared.start("t", Stage("judge", Slow, {"seconds": 6.0}, settings), pa.table({"x": list(range(10))}))
    got = []
    try:
        deadline = time.monotonic() + 120
        while not doomed.streams and time.monotonic() < deadline:  # its stream has started
            time.sleep(0.2)
        time.sleep(2.0)  # its caller is in its 60 s call
        t0 = time.monotonic()
        stopped.stop(wait=False)
        took = time.monotonic() - t0
        assert not doomed.thread.is_alive() and took < 2.0, f"the stopped wave's thread still runs after {took:.1f}s"
        while spared.running and time.monotonic() < deadline:
            event = spared.next(1.0)
            if event is not None and event.error is not None:
                raise event.error
            if event is not None and event.batch is not None:
                got += event.batch.to_pylist()
    finally:
        stopped.stop()
        spared.stop()
    assert sorted(r["x"] for r in got) == list(range(10)) and all(r["y"] == 2 * r["x"] for r in got)
