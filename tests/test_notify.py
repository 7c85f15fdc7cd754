"""Notifications against a local HTTP server that checks what Lark, Slack and a
generic webhook would get (and Lark's signature); a failed post is a warning."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pyarrow as pa
import pytest

from raveval.config.schema import NotifyConfig
from raveval.results.notify import notify
from raveval.results.summary import SUMMARY_SCHEMA
from webhook_server import WebhookServer, expected_sign

SECRET = "lark-signing-secret-123"
SUMMARY = pa.Table.from_pylist([
    {"model": "m", "dataset": "mmlu", "metric": "accuracy", "level": "dataset", "value": 0.625, "n": 8, "errors": 0},
    {"model": "m", "dataset": "mmlu", "metric": "accuracy/stem", "level": "group", "value": 0.5, "n": 4, "errors": 0},
    {"model": "m", "dataset": "mt", "metric": "score", "level": "dataset", "value": 7.25, "n": 4, "errors": 1},
], schema=SUMMARY_SCHEMA)


def config(srv: WebhookServer, **kw) -> NotifyConfig:
    targets = kw.pop("targets", None) or [
        {"kind": "lark", "url": f"{srv.url}/lark/tok-lark", "secret": SECRET},
        {"kind": "slack", "url": f"{srv.url}/slack/tok-slack"},
        {"kind": "webhook", "url": f"{srv.url}/hook/tok-hook"},
    ]
    return NotifyConfig.model_validate({"targets": targets, **kw})


def test_each_kind_gets_its_payload_and_lark_a_valid_signature():
    lines = []
    with WebhookServer(lark_secret=SECRET) as srv:
        out = notify(config(srv), "finish", model="m", work_dir="/w", run_id="m-1", summary=SUMMARY, log=lines.append)
    assert lines == [] and list(out.values()) == [None, None, None]
    (lark,), (slack,), (hook,) = srv.bodies("lark"), srv.bodies("slack"), srv.bodies("hook")
    assert [p["sign_ok"] for p in srv.posts if p["path"].startswith("/lark/")] == [True]  # the server's own check
    assert lark["sign"] == expected_sign(lark["timestamp"], SECRET) and lark["msg_type"] == "text"
    text = lark["content"]["text"]
    assert text.startswith("raveval run finished: model m, run m-1, work_dir /w")
    assert "mmlu | accuracy | 62.50% | 8 | 0" in text and "mt | score | 7.25 | 4 | 1" in text
    assert "accuracy/stem" not in text  # the headline rows only
    assert slack["text"].startswith("raveval run finished") and "```\ndataset | metric" in slack["text"]
    assert hook["event"] == "finish" and hook["status"] == "finished" and hook["run_id"] == "m-1"
    assert hook["summary"][0] == {"model": "m", "dataset": "mmlu", "metric": "accuracy", "value": 0.625, "n": 8,
                                  "errors": 0}


def test_events_go_only_where_asked():
    with WebhookServer() as srv:
        cfg = config(srv, targets=[{"kind": "webhook", "url": f"{srv.url}/hook/a", "events": ["failure"]}])
        assert notify(cfg, "start", model="m", work_dir="/w") == {}
        notify(cfg, "failure", model="m", work_dir="/w", reason="dataset x: no file")
    (body,) = srv.bodies("hook")
    assert body["event"] == "failure" and body["reason"] == "dataset x: no file" and body["status"] == "failed"


def test_failed_posts_are_one_warning_each_and_never_name_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    lines = []
    with WebhookServer(lark_secret="the-other-secret", slow_s=5) as srv:
        cfg = config(srv, timeout_s=1, targets=[
            {"kind": "lark", "url": f"{srv.url}/lark/tok-lark", "secret": SECRET},
            {"kind": "webhook", "url": f"{srv.url}/fail/tok-fail"},
            {"kind": "slack", "url": f"{srv.url}/slow/tok-slow"},
            {"kind": "webhook", "url": f"http://127.0.0.1:{dead}/hook/tok-dead"},
        ])
        out = notify(cfg, "start", model="m", work_dir="/w", log=lines.append)
    assert len(lines) == 4 and all(ln.startswith("raveval: warning: the start notification to ") for ln in lines)
    why = list(out.values())
    assert why[0].startswith("Lark code 19021") and why[1] == "HTTP 500"
    assert "timed out" in why[2] or why[2] == "no answer within 1s"
    assert "Refused" in why[3] or "refused" in why[3]
    assert not any(t in "\n".join(lines) for t in ("tok-", SECRET))


def test_urls_and_secrets_are_redacted_where_the_config_is_saved(tmp_path):
    from raveval.config.compose import config_yaml
    from raveval.run.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("defaults:\n  - base\n  - model: instant\n  - datasets: [demo_gsm8k_gen]\n  - _self_\n"
                    f"work_dir: {tmp_path}/w\n"
                    "notify:\n  targets:\n"
                    "    - {kind: lark, url: '${oc.env:RV_TEST_LARK_URL}', secret: '${oc.env:RV_TEST_LARK_SECRET}'}\n")
    os.environ.update(RV_TEST_LARK_URL="https://open.feishu.cn/open-apis/bot/v2/hook/abc-token",
                      RV_TEST_LARK_SECRET=SECRET)
    try:
        cfg = load_config(str(path))
    finally:
        del os.environ["RV_TEST_LARK_URL"], os.environ["RV_TEST_LARK_SECRET"]
    assert cfg.notify.targets[0].url.get_secret_value().endswith("abc-token")
    saved = config_yaml(cfg)
    assert "abc-token" not in saved and SECRET not in saved and "**********" in saved
    assert "abc-token" not in repr(cfg)


@pytest.mark.parametrize("target, error", [
    ({"kind": "slack", "url": "https://hooks.slack.com/x", "secret": "s"}, "only a lark bot signs"),
    ({"kind": "lark", "url": "ftp://x"}, "must start with http"),
    ({"kind": "teams", "url": "https://x"}, "kind"),
])
def test_bad_targets_fail_the_config(target, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        NotifyConfig.model_validate({"targets": [target]})


def test_a_run_that_fails_posts_start_and_failure(tmp_path):
    """A run whose dataset cannot load: exit 1, and the failure post says why."""
    with WebhookServer() as srv:
        path = tmp_path / "run.yaml"
        path.write_text("defaults:\n  - base\n  - model: instant\n  - datasets: [gsm8k_gen]\n  - _self_\n"
                        f"work_dir: {tmp_path}/w\ndata_root: {tmp_path}/none\n"
                        f"notify:\n  targets:\n    - {{kind: webhook, url: '{srv.url}/hook/tok'}}\n")
        out = subprocess.run([sys.executable, "-m", "raveval", "run", str(path)], capture_output=True, text=True,
                             timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    events = [b["event"] for b in srv.bodies("hook")]
    assert events == ["start", "failure"], out.stderr
    failure = srv.bodies("hook")[1]
    assert "gsm8k_gen" in failure["reason"] and failure["run_id"].startswith("instant")
    assert failure["summary"] and failure["summary"][0]["dataset"] == "gsm8k_gen"
