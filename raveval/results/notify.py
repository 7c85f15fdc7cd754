"""Run events (start, finish, failure) posted to a Lark (Feishu) custom bot, a
Slack incoming webhook or a generic JSON webhook (the `notify:` config).

A notification is a side effect of a run, never part of it: every post is
bounded by `timeout_s` in all, and one that fails becomes one warning line.
Webhook URLs and signing secrets are never written to a message: a warning
names the target by its kind and host only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from raveval.config.schema import NotifyConfig, NotifyTarget

TITLES = {"start": "started", "finish": "finished", "failure": "FAILED"}


def lark_sign(timestamp: int, secret: str) -> str:
    """Lark/Feishu custom bot signature: HMAC-SHA256 keyed by "timestamp\\nsecret" over an empty message, base64."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", digestmod=hashlib.sha256).digest()).decode()


def headline_rows(summary) -> list[dict]:
    """The dataset-level rows of a summary (an Arrow table or row dicts): what a chat message shows."""
    rows = summary.to_pylist() if hasattr(summary, "to_pylist") else list(summary or [])
    return [{k: r.get(k) for k in ("model", "dataset", "metric", "value", "n", "errors")}
            for r in rows if r.get("level") == "dataset"]


def _value(v, metric: str) -> str:
    from raveval.tasks.scoring import is_score_metric

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if is_score_metric(metric) else f"{100 * v:.2f}%"


def message_text(event: dict) -> str:
    """The plain-text message of an event: one line of what happened, then the headline table."""
    lines = [f"raveval run {TITLES[event['event']]}: model {event['model']}"
             + (f", run {event['run_id']}" if event.get("run_id") else "")
             + f", work_dir {event['work_dir']} (host {event['host']})"]
    if event.get("reason"):
        lines.append(f"reason: {event['reason']}")
    rows = event.get("summary") or []
    if rows:
        lines.append("dataset | metric | value | n | errors")
        lines += [f"{r['dataset']} | {r['metric']} | {_value(r['value'], r['metric'])} | {r['n']} | {r['errors']}"
                  for r in rows]
    return "\n".join(lines)


def payload(target: NotifyTarget, event: dict, now: float | None = None) -> dict:
    """The JSON body for one target."""
    text = message_text(event)
    if target.kind == "lark":
        body: dict = {"msg_type": "text", "content": {"text": text}}
        if target.secret is not None:
            ts = int(now if now is not None else time.time())
            body = {"timestamp": str(ts), "sign": lark_sign(ts, target.secret.get_secret_value()), **body}
        return body
    if target.kind == "slack":
        head, _, table = text.partition("\n")
        return {"text": head + (f"\n```\n{table}\n```" if table else "")}
    return {**event, "text": text}


def _host(target: NotifyTarget) -> str:
    return urllib.parse.urlsplit(target.url.get_secret_value()).hostname or "?"


def _post(target: NotifyTarget, body: dict, timeout_s: float) -> str | None:
    """None when the target took the post, else why not (without the URL)."""
    req = urllib.request.Request(target.url.get_secret_value(), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            reply = resp.read(65536).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, socket.timeout) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    if target.kind == "lark":  # Lark answers 200 with a code: 0 is success (sign mismatch is 19021)
        try:
            data = json.loads(reply)
        except ValueError:
            return f"not a Lark reply: {reply[:80]!r}"
        code = data.get("code", data.get("StatusCode", 0))
        if code != 0:
            return f"Lark code {code}: {data.get('msg') or data.get('StatusMessage') or ''}".rstrip(": ")
    return None


def notify(config: NotifyConfig, event: str, *, model: str, work_dir: str, run_id: str = "", status: str = "",
           summary=None, reason: str = "", log=print) -> dict[str, str | None]:
    """Post `event` (start, finish, failure) to every target that wants it, all at
    once, for at most `timeout_s` in all. Returns {target: None or why it failed};
    each failure is also one line through `log`. Never raises."""
    targets = [t for t in config.targets if event in t.events]
    if not targets:
        return {}
    record = {"event": event, "status": status or {"start": "running", "finish": "finished"}.get(event, "failed"),
              "run_id": run_id, "model": model, "work_dir": work_dir, "host": socket.gethostname(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason,
              "summary": headline_rows(summary) if summary is not None else []}
    names = [f"{t.kind} #{i + 1} ({_host(t)})" for i, t in enumerate(targets)]
    outcome: dict[str, str | None] = {n: f"no answer within {config.timeout_s:g}s" for n in names}

    def send(name: str, target: NotifyTarget) -> None:
        try:
            outcome[name] = _post(target, payload(target, record), config.timeout_s)
        except Exception as e:  # a notification never fails the run
            outcome[name] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=send, args=(n, t), daemon=True) for n, t in zip(names, targets)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + config.timeout_s + 1
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    for name, why in outcome.items():
        if why:
            log(f"raveval: warning: the {event} notification to {name} failed: {why}")
    return outcome
