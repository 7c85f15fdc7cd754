"""work_dir on shared storage: a URI (s3://, file://) through pyarrow's filesystems,
tested against a real S3-compatible server (moto's server mode on 127.0.0.1),
and a relative work_dir refused inside a Ray job."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raveval.results.lock import WorkDirLock, WorkDirLocked
from raveval.results.store import Store
from raveval.results.workdir import WorkDir, WorkDirError, display

ROOT = Path(__file__).resolve().parents[1]
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port of 127.0.0.1 with bucket `evals`; the AWS
    variables point pyarrow (and the raveval subprocesses) at it."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="evals")
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rows(keys, errors):
    return pa.table({"key": keys, "error": pa.array(errors, pa.string())})


def test_store_on_s3_resumes_and_latest_wins(s3):
    s = Store("s3://evals/store-test")
    assert s.read() is None and s.finished_keys() == set()
    s.write_part(rows(["a", "b"], [None, "boom"]))
    Store("s3://evals/store-test").write_part(rows(["b"], [None]))  # a later run retries b
    assert Store("s3://evals/store-test").finished_keys() == {"a", "b"}
    files = s.write_summary(pa.table({"value": [0.5]}), "| table |\n")
    assert files[2] == "s3://evals/store-test/summary.md"
    work = WorkDir("s3://evals/store-test")
    assert work.read_bytes("summary.md") == b"| table |\n"
    # Written in place (an object store write is whole or absent): no temp objects left.
    assert work.list("predictions") == sorted(work.list("predictions", "part-", ".parquet"))


def test_lock_on_s3_names_the_holder_and_is_released(s3):
    work = WorkDir("s3://evals/lock-test")
    with WorkDirLock(work, "run-a", log=lambda *_: None):
        assert work.exists("run.lock")
        with pytest.raises(WorkDirLocked, match=r"in use by run run-a \(host .*pid"):
            WorkDirLock(work, "run-b").acquire()
    assert not work.exists("run.lock")


def test_missing_bucket_and_unknown_scheme_are_one_line(s3):
    with pytest.raises(WorkDirError, match="nosuchbucket"):
        Store("s3://nosuchbucket/run").write_part(rows(["a"], [None]))
    with pytest.raises(WorkDirError, match="work_dir nope://x/y cannot be opened: .*Unrecognized filesystem"):
        WorkDir("nope://x/y")


def test_credentials_in_a_uri_are_not_shown():
    assert display("s3://AKIAEXAMPLE:s3cr3t@bucket/run?secret_key=s3cr3t") == "s3://***@bucket/run?secret_key=***"
    assert display("results/demo") == "results/demo"


def test_file_uri_is_a_local_folder(tmp_path):
    Store(f"file://{tmp_path}/w").write_part(rows(["a"], [None]))
    assert Store(tmp_path / "w").finished_keys() == {"a"}


def run_cli(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "raveval", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


def test_run_writes_to_s3_and_resumes_from_the_bucket(s3, tmp_path):
    args = ["demo", "work_dir=s3://evals/runs/demo", "datasets=[demo_mmlu_ll]", "--no-subjects"]
    first = run_cli(*args, env=s3)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "results: s3://evals/runs/demo/summary.parquet" in first.stdout
    work = WorkDir("s3://evals/runs/demo")
    summary = pq.read_table(work.path("summary.parquet"), filesystem=work.fs).to_pylist()
    head = next(r for r in summary if r["dataset"] == "demo_mmlu_ll" and r["level"] == "dataset")
    assert head["n"] == 24 and head["errors"] == 0
    assert work.exists("config.yaml") and work.exists("run.json") and not work.exists("run.lock")
    assert not (ROOT / "s3:").exists()  # nothing landed in a local folder named after the URI

    again = run_cli(*args, env=s3)  # resume: every row comes from the bucket
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 24 rows reused from s3://evals/runs/demo" in again.stdout


def test_run_to_a_missing_bucket_fails_in_one_line(s3):
    out = run_cli("demo", "work_dir=s3://nosuchbucket/run", "datasets=[demo_mmlu_ll]", env=s3, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "nosuchbucket" in out.stderr.strip().splitlines()[-1]


def test_relative_work_dir_is_refused_inside_a_ray_job(tmp_path):
    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_x"}}'}
    out = run_cli("demo", "work_dir=results/demo", "--dry-run", env=job, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "work_dir" in out.stderr and "relative" in out.stderr and "Ray job" in out.stderr
    ok = run_cli("demo", f"work_dir={tmp_path}/abs", "--dry-run", env=job, timeout=120)
    assert ok.returncode == 0, ok.stderr
