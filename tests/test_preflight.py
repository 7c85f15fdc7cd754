"""Preflight: a wrong key, URL or model name is one line within seconds, before any
generation, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from raveval.config.schema import EndpointConfig
from raveval.http.preflight import check

from fake_judge import FakeChatServer

ROOT = Path(__file__).resolve().parents[1]


def ask(base_url: str, key: str | None = None, model: str = "judge-1", **kw):
    cfg = EndpointConfig(base_url=base_url, model=model, api_key_env="K" if key else None, **kw)
    return asyncio.run(check(cfg, SecretStr(key) if key else None, "judge j", timeout_s=2.0))


def test_endpoint_checks():
    with FakeChatServer(api_key="k-right", models=["judge-1", "judge-2"]) as srv:
        assert ask(srv.base_url, "k-right") is None
        assert ask(srv.base_url, "k-wrong") == (f"judge j: {srv.base_url} refused the request (HTTP 401): the key is "
                                                "wrong or missing; check K")
        assert ask(srv.base_url, "k-right", model="gpt-5") == (
            f"judge j: {srv.base_url} does not serve model 'gpt-5' (it serves: judge-1, judge-2)")
        assert srv.log == []  # no chat request, no tokens spent
    with FakeChatServer() as srv:  # a server without GET /models: reachable, model unchecked
        assert ask(srv.base_url) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    assert ask(f"http://127.0.0.1:{port}/v1").startswith(f"judge j: http://127.0.0.1:{port}/v1 cannot be reached")
    # Credentials in the URL stay out of the message.
    assert "pw" not in ask(f"http://u:pw@127.0.0.1:{port}/v1?key=pw")


def raveval(*args, env=None):
    return subprocess.run([sys.executable, "-m", "raveval", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_api_model_that_is_not_served_stops_the_run_before_ray(tmp_path):
    with FakeChatServer(models=["other-model"]) as srv:
        t0 = time.monotonic()
        out = raveval("demo", "model=gpt4o_mini_api", f"model.api.base_url={srv.base_url}", "model.api.api_key_env=null",
                      "datasets=[demo_gsm8k_gen]", f"work_dir={tmp_path}")
        took = time.monotonic() - t0
        assert srv.log == []
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"raveval: model gpt-4o-mini: {srv.base_url} does not serve model 'gpt-4o-mini' (it serves: other-model) "
        "(preflight: false skips this check)")
    assert took < 60 and "deploying" not in out.stdout  # no Ray, no replica


def test_missing_key_stops_the_run_before_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "raveval", "run", "demo", "model=gpt4o_mini_api",
                          "datasets=[demo_gsm8k_gen]", f"work_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("raveval: environment variable OPENAI_API_KEY (api_key_env of model "
                                                    "gpt-4o-mini) is not set where the run was started")
