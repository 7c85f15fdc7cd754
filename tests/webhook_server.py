"""A local HTTP server that takes notification posts the way their services do
and keeps them: /lark/<token> checks Lark's signature (and the timestamp's age)
against `lark_secret` and answers with Lark's codes, /slack/<token> answers "ok",
/hook/<token> answers 200, /fail/<token> 500, /slow/<token> waits `slow_s` first."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def expected_sign(timestamp: str, secret: str) -> str:
    """Written out here from Lark's documentation, apart from raveval's own code."""
    mac = hmac.new(f"{timestamp}\n{secret}".encode("utf-8"), msg=b"", digestmod=hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("utf-8")


class WebhookServer:
    def __init__(self, lark_secret: str | None = None, slow_s: float = 5.0):
        self.lark_secret = lark_secret
        self.slow_s = slow_s
        self.posts: list[dict] = []  # {"path", "body", "sign_ok"}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                kind = self.path.strip("/").split("/")[0]
                sign_ok = None
                if kind == "lark" and outer.lark_secret is not None:
                    ts = str(body.get("timestamp", ""))
                    sign_ok = (body.get("sign") == expected_sign(ts, outer.lark_secret)
                               and ts.isdigit() and abs(time.time() - int(ts)) < 3600)
                with outer.lock:
                    outer.posts.append({"path": self.path, "body": body, "sign_ok": sign_ok})
                if kind == "slow":
                    time.sleep(outer.slow_s)
                if kind == "fail":
                    return self._reply(500, {"error": "boom"})
                if kind == "lark":
                    if sign_ok is False:
                        return self._reply(200, {"code": 19021, "msg": "sign match fail or timestamp is not "
                                                                       "within one hour from current time"})
                    return self._reply(200, {"code": 0, "msg": "success", "data": {}})
                if kind == "slack":
                    return self._reply(200, "ok")
                return self._reply(200, {})

            def _reply(self, status, data):
                raw = (data if isinstance(data, str) else json.dumps(data)).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, kind: str) -> list[dict]:
        with self.lock:
            return [p["body"] for p in self.posts if p["path"].strip("/").split("/")[0] == kind]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
