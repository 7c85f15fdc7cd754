"""Warm models on a real cluster (`ray start --head`, ended by PID): `raveval serve up`
leaves the model running, a run of the same model uses it and leaves it, a run of
another model identity starts its own, `serve down` removes it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_head import ray_head as start_head

ROOT = Path(__file__).resolve().parents[1]


def raveval(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "raveval", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_serve_up_run_uses_it_then_down(tmp_path):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to end the head's processes by PID")
    with start_head() as head:
        addr, env = f"ray_address={head.address}", head.env
        up = raveval(env, "serve", "up", "demo", addr)
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        warm = up.stdout.strip().splitlines()[-1].split(":")[0]
        assert warm.startswith("raveval-warm-tiny-llama-"), up.stdout

        ls = raveval(env, "serve", "ls", "--address", head.address)
        assert ls.returncode == 0 and f"{warm}  RUNNING  1 replica(s)" in ls.stdout, ls.stdout + ls.stderr[-2000:]

        run = raveval(env, "run", "demo", addr, "datasets=[demo_mmlu_ll]", f"work_dir={tmp_path / 'a'}")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"model tiny-llama on the warm deployment {warm}" in run.stdout
        assert json.loads((tmp_path / "a" / "run.json").read_text())["serve_app"] == warm
        assert f"{warm}  RUNNING" in raveval(env, "serve", "ls", "--address", head.address).stdout  # left running

        other = raveval(env, "run", "demo", addr, "datasets=[demo_mmlu_ll]", "model.max_model_len=1024",
                        f"work_dir={tmp_path / 'b'}")
        assert other.returncode == 0, other.stderr[-3000:]
        assert "model tiny-llama deploying" in other.stdout  # another identity: its own replicas

        down = raveval(env, "serve", "down", "--address", head.address)
        assert down.returncode == 0 and f"deleted {warm}" in down.stdout, down.stdout + down.stderr[-2000:]
        assert raveval(env, "serve", "ls", "--address", head.address).stdout.strip() == ""
        bad = raveval(env, "serve", "down", "raveval-warm-nope", "--address", head.address)
        assert bad.returncode == 1 and "no warm deployment raveval-warm-nope" in bad.stderr
