"""`raveval run` as a Ray job, with the real `ray job submit / logs / status / stop`
CLIs against a head of the test's own with the dashboard (tests/ray_head.py,
ended by PID): results land in the requested work_dir, the logs show the
progress, `ray job stop` ends the run and its replicas, a bad config fails the job."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_head import RAY, ray_head

PY = sys.executable  # the driver runs this venv's python, by absolute path
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture(scope="module")
def head():
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to end the head's processes by PID")
    with ray_head(dashboard=True) as h:
        yield h


def job(head, cmd: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray job CMD --address <dashboard> ARGS` with the head's token."""
    return subprocess.run([RAY, "job", cmd, "--address", head.dashboard, *args], env=head.env, capture_output=True,
                          text=True, timeout=timeout)


def submit(head, name: str, *run_args: str) -> str:
    """Submit `python -m raveval run ...` without waiting; returns the submission id."""
    sid = f"raveval-{name}-{secrets.token_hex(3)}"
    out = job(head, "submit", "--submission-id", sid, "--no-wait", "--", PY, "-m", "raveval", "run", *run_args)
    assert out.returncode == 0, out.stdout + out.stderr
    return sid


def status(head, sid: str) -> str:
    """The job's status, from what `ray job status` prints."""
    out = job(head, "status", sid)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    said = {f"Job '{sid}' succeeded": "SUCCEEDED", f"Job '{sid}' failed": "FAILED",
            f"Job '{sid}' was stopped": "STOPPED", f"Status for job '{sid}': RUNNING": "RUNNING",
            f"Status for job '{sid}': PENDING": "PENDING"}
    return next((st for line, st in said.items() if line in text), text)


def wait_status(head, sid: str, timeout_s: float) -> str:
    """Poll `ray job status` (bounded) until the job ends; returns its status."""
    deadline = time.monotonic() + timeout_s
    while (st := status(head, sid)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    return st


def logs(head, sid: str) -> str:
    out = job(head, "logs", sid)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_submitted_run_writes_its_work_dir_and_logs_progress(head, tmp_path):
    work = tmp_path / "work"  # absolute: the job's working directory is not the submitter's
    sid = submit(head, "ok", "--no-subjects", "demo", "ray_address=auto", f"work_dir={work}",
                 "datasets=[demo_mmlu_ll]")
    # `ray job logs -f` follows the logs until the job ends (as a user watches a run).
    out = job(head, "logs", "-f", sid, timeout=300)
    text = out.stdout
    assert out.returncode == 0 and status(head, sid) == "SUCCEEDED", text[-5000:] + out.stderr[-2000:]
    rec = json.loads((work / "run.json").read_text())
    assert rec["status"] == "finished" and rec["ray_address"] == "auto"
    assert all((work / f).is_file() for f in ("summary.parquet", "summary.csv", "summary.md", "config.yaml"))
    assert "| tiny-llama | demo_mmlu_ll | accuracy |" in (work / "summary.md").read_text()
    # The job's logs carry raveval's progress and its last lines.
    assert f"run {rec['run_id']}: work_dir {work}, Serve app {rec['serve_app']}" in text
    assert "model tiny-llama deploying" in text and "streaming 24 rows" in text
    assert "model demo_mmlu_ll: 24/24 rows (100%)" in text  # raveval's progress lines (not a terminal)
    assert "| tiny-llama | demo_mmlu_ll | accuracy |" in text and f"results: {work}/summary.parquet" in text
    assert "raveval: 24 of 24 rows scored" in text.splitlines(), text[-2000:]
    assert f"Job '{sid}' succeeded" in text  # -f said how the job ended


def live_replicas(head, app: str) -> tuple[list[str], list[str]]:
    """(Serve apps named `app`, live replica actors of it), as the head sees them."""
    code = ("import json, ray; from ray import serve; from ray.util.state import list_actors\n"
            "ray.init(address=%r, logging_level='ERROR')\n"
            "apps = [a for a in serve.status().applications if a == %r]\n"
            "reps = [a.name for a in list_actors(address=%r, filters=[('state', '=', 'ALIVE')], limit=10000)\n"
            "        if a.name.startswith('SERVE_REPLICA::%s#')]\n"
            "print('STATE', json.dumps([apps, reps]))" % (head.address, app, head.dashboard, app))
    out = subprocess.run([PY, "-c", code], env=head.env, capture_output=True, text=True, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("STATE ")]
    assert out.returncode == 0 and line, out.stdout + out.stderr[-3000:]
    return tuple(json.loads(line[-1][len("STATE "):]))


def test_job_stop_ends_the_run_and_its_replicas(head, tmp_path):
    work = tmp_path / "work"
    # Slow on purpose: one row per Serve call, long generations (~1 s a row here).
    sid = submit(head, "stop", "demo", "ray_address=auto", f"work_dir={work}", "datasets=[demo_gsm8k_gen]",
                 "model_stream.batch_rows=1", "model_stream.callers=1", "model_stream.calls_per_caller=1",
                 "datasets.demo_gsm8k_gen.generation.max_new_tokens=1024", "datasets.demo_gsm8k_gen.generation.stop=[]")
    deadline = time.monotonic() + 300
    while not any((work / "predictions").glob("part-*.parquet")):  # rows are streaming
        assert time.monotonic() < deadline and status(head, sid) not in TERMINAL, logs(head, sid)[-5000:]
        time.sleep(0.5)
    app = json.loads((work / "run.json").read_text())["serve_app"]
    apps, reps = live_replicas(head, app)
    assert apps == [app] and len(reps) == 1, (apps, reps)  # so "none left" below is not vacuous

    out = job(head, "stop", sid, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    st = wait_status(head, sid, 60)
    text = logs(head, sid)
    assert st == "STOPPED", text[-5000:]
    # raveval's SIGTERM path ran: its line, and the run recorded as interrupted with the lock released.
    assert "raveval: stopped by SIGTERM; " in text and "run the same command again to resume" in text, text[-3000:]
    rec = json.loads((work / "run.json").read_text())
    assert rec["status"] == "interrupted" and not (work / "run.lock").exists(), rec
    # It ended on its own within the job supervisor's grace period (RAY_JOB_STOP_WAIT_TIME_S,
    # 3 s), before the SIGKILL that would cut its clean-up short.
    said = Path(head.tmp, "session_latest", "logs", "jobs", f"supervisor-{sid}.log").read_text()
    assert "terminated gracefully with SIGTERM" in said and "force-killed" not in said, said[-2000:]
    # Nothing of the run is left on the cluster (Serve removes the replicas shortly after the app's deletion).
    deadline = time.monotonic() + 60
    while (left := live_replicas(head, app)) != ([], []) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == ([], []), f"left behind on the cluster: {left}"


@pytest.mark.parametrize("bad, says", [
    ("no_such_key=1", "no_such_key: unknown key"),
    ("datasets=[no_such_dataset]", "Could not load 'datasets/no_such_dataset'"),
])
def test_bad_config_fails_the_job_with_raveval_s_error(head, tmp_path, bad, says):
    sid = submit(head, "bad", "demo", "ray_address=auto", f"work_dir={tmp_path / 'work'}", bad)
    st = wait_status(head, sid, 120)
    text = logs(head, sid)
    assert st == "FAILED", text[-3000:]
    assert "exit code 2" in job(head, "status", sid).stdout  # raveval's status for a config error
    # raveval's own error (one `raveval:` line, then the details it names), not a traceback.
    lines = text.splitlines()
    first = [i for i, ln in enumerate(lines) if ln.startswith("raveval: ")]
    assert len(first) == 1 and says in "\n".join(lines[first[0]:]) and "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "work").exists()  # refused before anything was written
