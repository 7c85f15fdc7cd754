"""A local OpenAI-compatible chat server for tests and benchmarks of the judge stage.

It runs aiohttp in a background thread on 127.0.0.1 and behaves like a rate
limited API: a real sliding-window limit (requests over the limit get 429 with
Retry-After), a fixed latency, and injected faults (429 + Retry-After, 500,
slow replies, dropped connections, malformed bodies) drawn with a seeded RNG.
It records every request it receives (time, outcome, connection), so a test
can check the rate a client really achieved.

The reply text comes from `responder(messages, body) -> str`; the default
answers in the verdict format the prompt asks for (MT-Bench `[[rating]]` and
`[[A]]`, AlignBench's score dict, AlpacaEval's m/M), and picks one of
`structured_outputs.choice` / `guided_choice` when the request constrains it.
"""
from __future__ import annotations

import asyncio
import bisect
import random
import threading
import time
from collections import Counter, deque
from typing import Callable, Optional

from aiohttp import web

FAULT_KINDS = ("429", "500", "slow", "drop", "malformed")


def default_responder(messages: list[dict], body: dict) -> str:
    choices = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice")
    text = "\n".join(str(m.get("content") or "") for m in messages)
    if choices:
        return choices[len(text) % len(choices)]
    if "[[rating]]" in text:
        return "The answer is helpful and mostly correct. Rating: [[7]]"
    if "[[A]]" in text:
        return "Assistant A follows the instructions better. [[A]]"
    if "综合得分" in text:
        return "回答基本正确。\n{'事实正确性': 8, '满足用户需求': 7, '综合得分': 7}"
    if "Output (m)" in text:
        return "m"
    return "Hello from the test server."


class FakeChatServer:
    def __init__(
        self,
        requests_per_minute: Optional[float] = None,
        window_s: float = 60.0,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = FAULT_KINDS,
        slow_s: float = 3.0,
        retry_after_s: float = 0.2,
        seed: int = 0,
        api_key: Optional[str] = None,
        models: Optional[list[str]] = None,
        responder: Callable[[list[dict], dict], str] = default_responder,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        unknown = set(fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.rpm = requests_per_minute
        self.window_s = window_s
        # Requests allowed in any window of window_s seconds.
        self.per_window = int(requests_per_minute * window_s / 60.0) if requests_per_minute else None
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.slow_s = slow_s
        self.retry_after_s = retry_after_s
        self.api_key = api_key
        self.models = models  # GET /v1/models lists these; None: no such route (404)
        self.responder = responder
        self.host, self.port = host, port
        self._rng = random.Random(seed)
        self._window: deque[float] = deque()  # arrival times of requests let through
        self.log: list[dict] = []  # every request: t, outcome, conn, body
        self._conns: dict[int, int] = {}
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        ready = threading.Event()
        err: list[BaseException] = []

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as e:  # report bind errors to the caller
                err.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-chat-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if err:
            raise err[0]
        return self.base_url

    async def _start(self):
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- observations ---------------------------------------------------
    def times(self, outcomes: Optional[set[str]] = None) -> list[float]:
        with self._lock:
            return [r["t"] for r in self.log if outcomes is None or r["outcome"] in outcomes]

    def outcomes(self) -> Counter:
        with self._lock:
            return Counter(r["outcome"] for r in self.log)

    @property
    def connections(self) -> int:
        """Distinct TCP connections that carried requests."""
        return len(self._conns)

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self._window.clear()
            self._conns.clear()

    @staticmethod
    def max_in_window(times: list[float], window_s: float) -> int:
        """Most requests in any half-open window [t, t + window_s)."""
        ts = sorted(times)
        return max((bisect.bisect_left(ts, t + window_s) - i for i, t in enumerate(ts)), default=0)

    @staticmethod
    def rate_per_min(times: list[float]) -> float:
        """Requests per minute between the first and the last request."""
        ts = sorted(times)
        if len(ts) < 2 or ts[-1] == ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0]) * 60.0

    # ---- the route ------------------------------------------------------
    def _record(self, request, outcome: str, body: Optional[dict], t: float) -> None:
        with self._lock:
            self.log.append({"t": t, "outcome": outcome, "conn": id(request.transport), "body": body,
                             "headers": dict(request.headers)})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """The OpenAI model list (not in `log`, which counts chat requests)."""
        if self.models is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t = time.monotonic()
        conn = id(request.transport)
        self._conns[conn] = self._conns.get(conn, 0) + 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._record(request, "unauthorized", None, t)
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError):
            self._record(request, "bad_request", None, t)
            return web.json_response({"error": {"message": "bad request"}}, status=400)

        if self.per_window is not None:
            with self._lock:
                while self._window and self._window[0] <= t - self.window_s:
                    self._window.popleft()
                if len(self._window) >= self.per_window:
                    wait = self._window[0] + self.window_s - t
                    limited = True
                else:
                    self._window.append(t)
                    limited = False
            if limited:
                self._record(request, "rate_limited", body, t)
                return web.json_response({"error": {"message": "rate limit exceeded"}}, status=429,
                                         headers={"Retry-After": f"{max(wait, 0.001):.3f}"})

        fault = None
        if self.fault_rate and self._rng.random() < self.fault_rate:
            fault = self._rng.choice(self.fault_kinds)
        self._record(request, fault or "ok", body, t)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "429":
            return web.json_response({"error": {"message": "busy"}}, status=429,
                                     headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if fault == "drop":
            request.transport.abort()
            raise asyncio.CancelledError()
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "malformed":
            return web.Response(text='{"id": "x", "choices": [{"message": ', content_type="application/json")
        text = self.responder(messages, body)
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        return web.json_response({
            "id": f"chatcmpl-{len(self.log)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(text) // 4 + 1,
                      "total_tokens": prompt_chars // 4 + len(text) // 4 + 2},
        })
