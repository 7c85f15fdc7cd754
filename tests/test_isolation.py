"""Run isolation: run ids, the work_dir lock, and two runs of the same model at
once on one Ray cluster (a real `ray start --head`, ended by PID)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raveval.results.lock import LOCK_FILE, WorkDirLock, WorkDirLocked

from ray_head import ray_head as start_head

ROOT = Path(__file__).resolve().parents[1]


def raveval(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "raveval", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def quiet(*_):
    pass


# ---- run ids -----------------------------------------------------------------
def test_run_ids_are_readable_and_unique():
    from raveval.run.evaluate import new_run_id
    from raveval.serving.deploy import app_name
    from raveval.run.config import load_config

    ids = {new_run_id("tiny-llama") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"tiny-llama-\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids)
    assert re.fullmatch(r"Qwen-Qwen2-7B-\d{8}-\d{6}-[0-9a-f]{4}", new_run_id("Qwen/Qwen2 7B"))
    cfg = load_config("demo", ["work_dir=/tmp/x"])
    assert app_name(cfg.model, "tiny-llama-20250101-120000-ab12") == "raveval-tiny-llama-20250101-120000-ab12"


# ---- the work_dir lock -------------------------------------------------------
def test_second_holder_is_refused_naming_the_first(tmp_path):
    with WorkDirLock(tmp_path, "m-20250101-120000-aaaa", log=quiet):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        with pytest.raises(WorkDirLocked) as e:
            WorkDirLock(tmp_path, "m-20250101-120001-bbbb", log=quiet).acquire()
        msg = str(e.value)
        assert "m-20250101-120000-aaaa" in msg and f"host {socket.gethostname()}" in msg
        assert f"pid {os.getpid()}" in msg and f"started {held['started']}" in msg and "\n" not in msg
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit
    with WorkDirLock(tmp_path, "m-20250101-120002-cccc", log=quiet):
        pass


def test_stale_lock_is_taken_over_and_others_are_not(tmp_path):
    host = socket.gethostname()
    lock = tmp_path / LOCK_FILE
    # A dead run on this host: taken over, with a line saying so.
    lock.write_text(json.dumps({"run_id": "dead-run", "host": host, "pid": dead_pid(), "started": "earlier"}))
    lines = []
    with WorkDirLock(tmp_path, "new-run", log=lines.append):
        assert json.loads(lock.read_text())["run_id"] == "new-run"
    assert len(lines) == 1 and "took over" in lines[0] and "dead-run" in lines[0] and "no longer running" in lines[0]
    # A live pid whose process started at another time (the pid was reused): stale too.
    lock.write_text(json.dumps({"run_id": "reused", "host": host, "pid": os.getpid(), "proc_start": 1}))
    with WorkDirLock(tmp_path, "new-run-2", log=lines.append):
        pass
    assert "reused" in lines[-1]
    # A lock from another host is never taken over: its process cannot be checked from here.
    lock.write_text(json.dumps({"run_id": "far", "host": "other-host", "pid": dead_pid(), "started": "t"}))
    with pytest.raises(WorkDirLocked, match=r"run far \(host other-host.*delete .*run\.lock"):
        WorkDirLock(tmp_path, "x", log=quiet).acquire()
    # An unreadable lock file is named, not overwritten.
    lock.write_text("{garbage")
    with pytest.raises(WorkDirLocked, match="cannot be read"):
        WorkDirLock(tmp_path, "x", log=quiet).acquire()
    assert lock.read_text() == "{garbage"


def test_lock_is_released_after_a_failing_run(tmp_path, monkeypatch):
    from raveval.run import evaluate
    from raveval.run.config import load_config

    def boom(cfg):
        raise RuntimeError("planning failed")

    monkeypatch.setattr(evaluate, "make_plan", boom)
    cfg = load_config("demo", [f"work_dir={tmp_path}"])
    lines = []
    with pytest.raises(RuntimeError, match="planning failed"):
        evaluate.run(cfg, log=lines.append)
    assert not (tmp_path / LOCK_FILE).exists()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and record["finished"] and record["serve_app"] == f"raveval-{record['run_id']}"
    assert lines[0].startswith(f"run {record['run_id']}: ")  # the run id comes first
    with WorkDirLock(tmp_path, "next", log=quiet):  # free for the next run
        pass


def test_cli_refuses_a_locked_work_dir_in_one_line(tmp_path):
    work = tmp_path / "w"
    with WorkDirLock(work, "tiny-llama-20250101-120000-abcd", log=quiet):
        out = raveval("run", "demo", f"work_dir={work}", timeout=120)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert lines[0].startswith(f"raveval: work_dir {work} is in use by run tiny-llama-20250101-120000-abcd "
                                   f"(host {socket.gethostname()}, pid {os.getpid()}, started "), lines[0]
        assert not (work / "config.yaml").exists() and not (work / "run.json").exists()
        # --dry-run takes no lock.
        dry = raveval("run", "demo", f"work_dir={work}", "--dry-run", timeout=120)
        assert dry.returncode == 0, dry.stderr


def test_cli_takes_over_a_dead_runs_lock_and_releases_it_on_error(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / LOCK_FILE).write_text(json.dumps({"run_id": "tiny-llama-dead", "host": socket.gethostname(),
                                              "pid": dead_pid(), "started": "2025-01-01T00:00:00+00:00"}))
    (work / "config.yaml").mkdir()  # the run fails once it holds the lock: it cannot save its config
    out = raveval("run", "demo", f"work_dir={work}", timeout=120)
    assert out.returncode != 0
    assert "took over the work_dir lock of run tiny-llama-dead" in out.stdout + out.stderr
    assert not (work / LOCK_FILE).exists()
    assert json.loads((work / "run.json").read_text())["status"] == "failed"


# ---- two runs of one model at once on one cluster ----------------------------
@pytest.fixture
def ray_head():
    """A Ray head of its own (tests/ray_head.py), ended by PID."""
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to end the head's processes by PID")
    with start_head() as head:
        yield head.address, head.env


def _summary(work: Path) -> dict:
    return {(r["dataset"], r["metric"]): r for r in pq.read_table(work / "summary.parquet").to_pylist()}


def test_two_runs_of_one_model_on_one_cluster(ray_head, tmp_path):
    """Two drivers run the same model on one cluster at once: each has its own run id and
    Serve app, the run that ends first deletes only its own app while the other still
    streams, and both summaries are complete and agree."""
    address, env = ray_head
    # Serve without an HTTP proxy (no route is used; port 8000 may be taken on this machine).
    start_serve = ("import ray; from ray import serve; ray.init(address=%r, logging_level='ERROR'); "
                   "serve.start(proxy_location='Disabled', logging_config={'enable_access_log': False})" % address)
    out = subprocess.run([sys.executable, "-c", start_serve], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]

    common = ["--no-subjects", "demo", f"ray_address={address}"]
    # A: one batch of ll rows. B: the same rows one per Serve call, then GSM8K with
    # long generations (~1 s a row here), so it is still streaming when A ends and
    # deletes its app.
    runs = {
        "a": [*common, f"work_dir={tmp_path / 'a'}", "datasets=[demo_mmlu_ll]"],
        "b": [*common, f"work_dir={tmp_path / 'b'}", "model_stream.batch_rows=1", "model_stream.callers=1",
              "model_stream.calls_per_caller=1", "datasets=[demo_mmlu_ll,demo_gsm8k_gen]",
              "datasets.demo_gsm8k_gen.generation.max_new_tokens=1024", "datasets.demo_gsm8k_gen.generation.stop=[]"],
    }
    procs, logs, ended = {}, {}, {}
    for name, args in runs.items():
        logs[name] = (tmp_path / f"{name}.log").open("w")
        procs[name] = subprocess.Popen([sys.executable, "-m", "raveval", "run", *args], cwd=ROOT, env=env,
                                       stdout=logs[name], stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for name, p in procs.items():
                if name not in ended and p.poll() is not None:
                    ended[name] = time.time()
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for f in logs.values():
            f.close()
    text = {n: (tmp_path / f"{n}.log").read_text() for n in runs}
    assert len(ended) == 2, "runs still going after 300s:\n" + "\n".join(t[-3000:] for t in text.values())
    for name, p in procs.items():
        assert p.returncode == 0, text[name][-5000:]

    rec = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in runs}
    assert rec["a"]["run_id"] != rec["b"]["run_id"]
    for n in runs:
        assert rec[n]["serve_app"] == f"raveval-{rec[n]['run_id']}" and rec[n]["status"] == "finished"
        assert f"run {rec[n]['run_id']}: " in text[n]  # printed at the start
        assert not (tmp_path / n / LOCK_FILE).exists()

    # The run that ended first deleted its app while the other was still writing rows.
    first, other = sorted(runs, key=ended.get)
    parts = sorted(p.stat().st_mtime for p in (tmp_path / other / "predictions").glob("part-*.parquet"))
    print(f"run {other} wrote {sum(t > ended[first] for t in parts)} of its {len(parts)} batches after run {first} "
          f"ended (the last {parts[-1] - ended[first]:.1f}s after)")
    assert parts[-1] > ended[first], (f"run {other} wrote its last rows before run {first} ended: "
                                      "the runs did not overlap (too fast on this machine?)")

    a, b = _summary(tmp_path / "a"), _summary(tmp_path / "b")
    assert a[("demo_mmlu_ll", "accuracy")]["n"] == 24 and a[("demo_mmlu_ll", "accuracy")]["errors"] == 0
    for ds in ("demo_mmlu_ll", "demo_gsm8k_gen"):
        assert b[(ds, "accuracy")]["errors"] == 0 and b[(ds, "accuracy")]["n"] > 0, b[(ds, "accuracy")]
    assert b[("demo_gsm8k_gen", "accuracy")]["n"] == 12
    # Same model, same rows: the same choices in both runs.
    rows = {n: {r["key"]: r["answer_pred"] for r in pq.read_table(tmp_path / n / "predictions").to_pylist()
                if r["dataset"] == "demo_mmlu_ll"} for n in runs}
    assert len(rows["a"]) == 24 and rows["a"] == {k: v for k, v in rows["b"].items() if k in rows["a"]}

    # Both apps are gone: each run deleted its own.
    list_apps = ("import ray; from ray import serve; ray.init(address=%r, logging_level='ERROR'); "
                 "print(sorted(serve.status().applications))" % address)
    out = subprocess.run([sys.executable, "-c", list_apps], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr[-2000:]
