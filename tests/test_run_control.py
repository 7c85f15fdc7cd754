"""A run as an operator sees it: replicas that take every CPU still stream, a
replica that cannot be placed stops the run within startup_timeout_s naming
what is missing, the exit status counts error rows, and SIGINT / SIGTERM end
the run at once, cleanly, with nothing of its Ray left running."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fake_judge import FakeChatServer
from raveval.results.store import Store
from raveval.run.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FEW = ["datasets=[demo_mmlu_ll,demo_gsm8k_gen]", "datasets.demo_mmlu_ll.limit=2", "datasets.demo_gsm8k_gen.limit=2"]


@pytest.mark.parametrize("overrides", [["model.replicas=2"], ["model.num_cpus=2"]], ids=["two-replicas", "all-cpus"])
def test_replicas_that_hold_every_cpu_still_stream(ray_local, tmp_path, overrides):
    """On this 2-CPU local Ray both runs once hung for good: Ray Data waited for a
    CPU the replicas held. Every row must come back."""
    from raveval.run.evaluate import run

    cpus = int(ray_local.cluster_resources()["CPU"])
    over = [o.replace("=2", f"={cpus}") if "num_cpus" in o else o for o in overrides]
    cfg = load_config("demo", [f"work_dir={tmp_path}", *FEW, *over])
    result = run(cfg, log=lambda *_: None)
    assert not result.failed and result.stats["rows"] == 8
    assert all(r["error"] is None for r in Store(tmp_path).read().to_pylist())


def test_unplaceable_replica_fails_within_the_startup_timeout(ray_local, tmp_path):
    """Joined to a cluster (no local resource check: it might autoscale), a
    replica asking for a GPU nobody has stops the run after startup_timeout_s
    with Serve's account of the missing resources."""
    from raveval.run.evaluate import run
    from raveval.serving.deploy import ModelStartError

    address = ray_local.get_runtime_context().gcs_address
    cfg = load_config("demo", [f"work_dir={tmp_path}", *FEW, f"ray_address={address}", "model.num_gpus=1",
                               "startup_timeout_s=8"])
    t0 = time.monotonic()
    with pytest.raises(ModelStartError) as e:
        run(cfg, log=lambda *_: None)
    assert time.monotonic() - t0 < 90
    msg = str(e.value)
    assert "startup_timeout_s" in msg and "num_gpus=1.0" in msg and "the cluster has" in msg, msg


def test_local_ray_refuses_gpus_it_does_not_have_at_once(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raveval", "run", "demo", f"work_dir={tmp_path}", *FEW,
                          "model.num_gpus=1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "need 1.0 GPU" in out.stderr and "Traceback" not in out.stderr, out.stderr


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "raveval", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_exit_status_counts_error_rows(tmp_path):
    """An API model behind a server that fails a third of the requests (no
    retries): the run ends with error rows, exit 1 and a last line that counts
    them; with max_error_rate above that share it exits 0."""
    with FakeChatServer(fault_rate=0.34, fault_kinds=("500",), seed=5) as srv:
        common = ["model=gpt4o_mini_api", f"model.api.base_url={srv.base_url}", "model.api.api_key_env=null",
                  "model.api.retry.max_retries=0", "datasets=[demo_gsm8k_gen]"]
        bad = _cli("demo", f"work_dir={tmp_path / 'a'}", *common)
        ok = _cli("demo", f"work_dir={tmp_path / 'b'}", *common, "max_error_rate=0.9")
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "rows ended in errors (max_error_rate 0)" in last and "of 12 rows" in last, last
    errors = sum(r["error"] is not None for r in Store(tmp_path / "a").read().to_pylist())
    assert 0 < errors < 12 and last.startswith(f"raveval: {errors} of 12")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "error rows within max_error_rate 0.9" in ok.stdout.strip().splitlines()[-1]


def _ray_processes(marker: str) -> list[str]:
    """Command lines of live processes that belong to the Ray under `marker` (its temp dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd[:160]}")
    return found


# Ray's warning as Ray Data creates the callers' actors: the stream is starting then.
STREAM_STARTS = "MapWorker(MapBatches(ModelCaller))"


@pytest.mark.parametrize("signum, code, when", [(signal.SIGINT, 130, "rows"), (signal.SIGTERM, 143, "rows"),
                                                (signal.SIGINT, 130, "stream")],
                         ids=["SIGINT", "SIGTERM", "SIGINT-as-the-stream-starts"])
def test_signal_ends_the_run_cleanly(tmp_path, signum, code, when):
    """`when` rows: Ray up, Serve deploying, rows on their way. `when` stream: 1 s after
    Ray Data starts the callers, while the stream's threads are inside Ray (there a
    thread calling Ray as it was shut down once made Ray end the process with status 1)."""
    tmp = tempfile.mkdtemp(prefix="rvsig-", dir="/tmp")  # this run's Ray lives under it
    env = {**os.environ, "RAY_TMPDIR": tmp}
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "raveval", "run", "demo", f"work_dir={work}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines, started = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if STREAM_STARTS in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if when == "stream":
            assert started.wait(240), f"no line with {STREAM_STARTS!r} (Ray's warning as the stream starts):\n" + \
                "".join(lines)[-3000:]
            time.sleep(1.0)
        else:
            deadline = time.monotonic() + 240
            while not _ray_processes(tmp) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(8)  # Ray up, Serve deploying, rows on their way
        t0 = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=60)
        reader.join(timeout=60)  # the rest of stderr
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == code, err[-3000:]
    assert took < 10, f"took {took:.1f}s to stop"
    assert "Traceback" not in err, err[-3000:]
    # No thread started a new Ray after the run's went (Ray warns when init runs off the main thread).
    assert "not the main thread" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("raveval:")]
    assert len(said) == 1 and f"stopped by {signal.Signals(signum).name}" in said[0] and "resume" in said[0], err
    deadline = time.monotonic() + 10
    while _ray_processes(tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(tmp), "left running:\n" + "\n".join(_ray_processes(tmp))


def test_signal_ends_a_side_by_side_run_cleanly(tmp_path):
    """Two models streaming side by side, each in its own thread of the driver: SIGINT
    as their streams start ends both models' streams before Ray goes (a thread left
    inside Ray made Ray end the process with status 1), and every run.json of the run
    says `interrupted`."""
    tmp = tempfile.mkdtemp(prefix="rvsig-", dir="/tmp")
    models = tmp_path / "conf" / "model"
    models.mkdir(parents=True)
    for name in ("a", "b"):  # answers take a while (token_s), so the stop comes mid-stream
        (models / f"inst_{name}.yaml").write_text(f"name: inst-{name}\nengine: instant\nnum_cpus: 0\ntoken_s: 0.05\n")
    (tmp_path / "many.yaml").write_text("defaults:\n  - base\n  - datasets: [demo_mmlu_ll, demo_gsm8k_gen]\n"
                                        f"  - _self_\nmodels: [inst_a, inst_b]\nwork_dir: {tmp_path}/work\n")
    proc = subprocess.Popen([sys.executable, "-m", "raveval", "run", "many.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_TMPDIR": tmp})
    lines = []
    try:
        for line in proc.stderr:  # until the first stream starts its callers
            lines.append(line)
            if STREAM_STARTS in line:
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "FAILED" not in out, out[-2000:] + err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("raveval:")]
    assert len(said) == 1 and "stopped by SIGINT" in said[0] and "inst-a" in said[0] and "inst-b" in said[0], err
    for work in ("work", "work/inst-a", "work/inst-b"):
        assert json.loads((tmp_path / work / "run.json").read_text())["status"] == "interrupted", work
    deadline = time.monotonic() + 10
    while _ray_processes(tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(tmp), "left running:\n" + "\n".join(_ray_processes(tmp))
