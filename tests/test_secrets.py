"""API keys on a cluster: a key set only where the run starts reaches the judge
callers and the API-model replica on another node, and appears nowhere on
disk, in logs, or in what Ray's state API, dashboard and Serve show.

A simulated cluster (ray.cluster_utils, in a subprocess: tests/secrets_cluster.py)
is started without the key in any node's environment; the driver alone has it.
The judge and the API model are a real HTTP server here that answers 401
without `Authorization: Bearer <key>`. Ray's export events are on, so Ray
Data's operator arguments (where the judge callers' key travels) are written
to the session's logs as text too, and searched.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fake_judge import FakeChatServer

ROOT = Path(__file__).resolve().parents[1]


def files_with(root: Path, needle: bytes) -> tuple[list[str], int]:
    """(files under `root` that contain `needle`, files read), every file, logs included."""
    hits, n = [], 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath, name)
            if p.is_symlink() or not p.is_file():
                continue
            try:
                data = p.read_bytes()
            except OSError:  # a socket or a file that went away meanwhile
                continue
            n += 1
            if needle in data:
                hits.append(str(p.relative_to(root)))
    return hits, n


def test_key_reaches_actors_on_other_nodes_and_is_shown_nowhere():
    key = "sk-rv-" + secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="rvk-", dir="/tmp"))  # short: Ray's socket paths
    # The session's own Ray sets RAY_AUTH_MODE in this process: the cluster of the subprocess is
    # started as a user's would be, and its dashboard read without a token.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    # The cluster's files stay in tmp; Ray writes its export events (operator arguments included).
    env.update(RAY_TMPDIR=str(tmp), PYTHONUNBUFFERED="1", RAY_enable_export_api_write="1")
    try:
        with FakeChatServer(api_key=key, latency_s=0.01) as srv:
            proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "secrets_cluster.py"), str(tmp),
                                     srv.base_url], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            try:
                out, _ = proc.communicate(key + "\n", timeout=420)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group: its Ray nodes go too
                out, _ = proc.communicate(timeout=30)
                pytest.fail("cluster run did not finish within 420 s:\n" + out[-4000:])
            outcomes = srv.outcomes()
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, out[-4000:]
        rep = json.loads(lines[-1][len("RESULT "):])
        assert not rep["failed"], rep["failed"]

        # No Ray process had the key in its environment ...
        assert rep["env_has_key"] and not any(rep["env_has_key"].values()), rep["env_has_key"]
        # ... and the API model's replica and the judge callers, on the worker node, sent it.
        assert set(rep["actor_nodes"]["model"]) == {rep["worker_node"]}, rep["actor_nodes"]
        assert set(rep["actor_nodes"]["judge"]) == {rep["worker_node"]}, rep["actor_nodes"]
        assert len(rep["predictions"]) == 4 and all(p["error"] is None for p in rep["predictions"]), rep["predictions"]
        assert len(rep["judgements"]) == 8 and all(j["error"] is None and j["verdict"] for j in rep["judgements"]), \
            rep["judgements"]
        assert outcomes == {"ok": 12}, outcomes  # no request went without the key

        # The key is in no file: work dir, Ray's session dir, logs and export events ...
        needle = key.encode()
        hits, read = files_with(tmp, needle)
        assert not hits, f"the key is in {hits}"
        assert key not in out  # nor in what the driver printed
        # ... though these files were read: the saved config names the endpoint, and Ray
        # Data's exported operator arguments show the judge callers' keys redacted.
        assert read > 50 and files_with(tmp / "work", srv.base_url.encode())[0]
        exported = files_with(tmp / "ray", b"**********")[0]
        assert any("export_events" in h for h in exported), "Ray Data's operator arguments were not exported"
        # Nor in what the state API, the dashboard and Serve show.
        for what, text in rep["shown"].items():
            assert text and key not in text, what
        assert "JudgeCaller" in rep["shown"]["actors (run ended)"]
        assert "raveval-" in rep["shown"]["dashboard /api/serve/applications/ (judging starts)"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
