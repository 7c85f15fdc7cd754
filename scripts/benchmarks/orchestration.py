"""raveval's own overhead: the whole pipeline with an engine that answers at once
(engine: instant), side by side with a bare Ray Data stream over the same rows in
the same Ray (from_items -> map_batches -> collect), the floor any Ray Data
pipeline pays.

Synthetic multiple-choice rows (ll mode, 4 choices), written to a temp folder.
Prints, for each: wall time, rows/s end to end, and for raveval its fixed cost
(Ray start, deploy, first batch) and rows/s after the first batch.

    .venv/bin/python scripts/benchmarks/orchestration.py [--rows 200000] [--batch-rows 1024]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def write_rows(folder: Path, n: int) -> Path:
    path = folder / "synth.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Item {i}: which is alpha?", "choices": [f"alpha {i}", "beta", "gamma",
                                                                                    "delta"], "gold": f"alpha {i}"}) + "\n")
    return path


def run_raveval(data: Path, work: Path, batch_rows: int) -> dict:
    from raveval.run.config import load_config
    from raveval.run.evaluate import run

    cfg = load_config("demo", ["model=instant", "datasets=[]", f"work_dir={work}",
                               f"model_stream.batch_rows={batch_rows}",
                               f"++datasets.synth={{loader: generic, path: '{data}', mode: ll, fields: {{choices: choices}}}}"])
    t0 = time.perf_counter()
    result = run(cfg, log=lambda *_: None)
    wall = time.perf_counter() - t0
    s = result.stats
    return {"wall_s": wall, "rows": s["rows"], "rows_per_s_end_to_end": s["rows"] / wall,
            "ready_s": s["ready_s"], "first_batch_s": s["first_batch_s"], "rows_per_s_after_first": s["rows_per_s"]}


def run_bare(n: int, batch_rows: int) -> dict:
    import ray

    rows = [{"key": str(i), "prompt": f"Item {i}: which is alpha?"} for i in range(n)]
    t0 = time.perf_counter()
    ds = ray.data.from_items(rows).map_batches(lambda b: {**b, "prediction": b["prompt"]}, batch_size=batch_rows)
    got = sum(len(b["key"]) for b in ds.iter_batches(batch_size=batch_rows))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows": got, "rows_per_s_end_to_end": got / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=1024)
    args = ap.parse_args()
    import os

    tmp = Path(tempfile.mkdtemp(prefix="raveval-orch-"))
    print(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; {args.rows} rows, "
          f"{args.batch_rows} per batch")
    data = write_rows(tmp, args.rows)
    rv = run_raveval(data, tmp / "work", args.batch_rows)  # leaves its local Ray running for the baseline
    bare = run_bare(args.rows, args.batch_rows)
    print(f"{'':28s}{'raveval (instant engine)':>26s}{'bare Ray Data':>16s}")
    for key in ("wall_s", "rows", "rows_per_s_end_to_end"):
        print(f"{key:28s}{rv[key]:>26,.1f}{bare[key]:>16,.1f}")
    for key in ("ready_s", "first_batch_s", "rows_per_s_after_first"):
        print(f"{key:28s}{rv[key]:>26,.1f}{'':>16s}")
    from raveval.run.config import load_config
    from raveval.run.evaluate import shutdown

    shutdown(load_config("demo", ["model=instant", f"work_dir={tmp / 'work'}"]))


if __name__ == "__main__":
    main()
