"""An OpenAI-compatible chat client on aiohttp, for judges and API models.

One `ChatClient` per endpoint per process: one `aiohttp.ClientSession` whose
connector keeps connections alive and reuses them, at most `max_concurrent`
requests in flight, each attempt bounded by `timeout_s`.

Every attempt first takes a slot from the endpoint's limiter (one of its
requests in flight, requests/min, and the token estimate prompt + max_tokens
for tokens/min), then the estimate is corrected from the reply's `usage`.
Retries with exponential backoff and jitter on 429, 408, 5xx, timeouts,
dropped connections and malformed replies. A 429, or a 503 with Retry-After
(seconds, HTTP date, or `retry-after-ms`), pauses the whole endpoint for the
advised time (or the backoff) and halves its requests in flight.
Other 4xx fail at once. A request whose retries are exhausted raises
`RequestFailed` with the reason; callers turn it into an error row.

Each attempt, each 429 and each wait for the limiter is counted as a Ray
metric (raveval.http.metrics), tagged by the run, model, dataset, stage and
endpoint the client's builder names.

The API key is handed over by whoever builds the client (the driver reads it,
raveval.http.keys); it is kept in the session's headers only, never in a
message, a repr or a log.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

import aiohttp
from pydantic import SecretStr

from raveval.config.secrets import public_url
from raveval.http.keys import MissingApiKey
from raveval.http.metrics import EndpointMetrics

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    """A chat request that did not succeed; `reason` says why, `retries` how often it was retried."""

    def __init__(self, reason: str, retries: int = 0, status: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.retries = retries
        self.status = status


@dataclass
class ChatResult:
    text: str
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    retries: int
    latency_s: float
    finish_reason: Optional[str] = None


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """What a provider books before the call: ~4 characters a token, plus max_tokens."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + max_tokens


def retry_after_s(headers) -> Optional[float]:
    """Seconds the server asks to wait (`retry-after-ms`, or Retry-After as seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _snippet(raw: bytes, n: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:n] + ("..." if len(text) > n else "")


def endpoint_url(base_url: str, path: str) -> str:
    """`base_url` + `/path`, a query (?key=...) kept after the path."""
    u = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(u._replace(path=u.path.rstrip("/") + "/" + path))


def request_headers(cfg, api_key: Optional[SecretStr]) -> dict[str, str]:
    """The headers every request to endpoint `cfg` carries: the key the driver read
    (as a bearer token) and the endpoint's own `headers` (secrets too)."""
    if cfg.api_key_env and api_key is None:
        raise MissingApiKey(f"endpoint {public_url(cfg.base_url)} needs the key of {cfg.api_key_env}, and none "
                            "was handed to this client")
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
    headers.update({k: v.get_secret_value() for k, v in cfg.headers.items()})
    return headers


class ChatClient:
    def __init__(self, cfg, limiter=None, max_concurrent: Optional[int] = None, api_key: Optional[SecretStr] = None,
                 metric_tags: Optional[dict] = None):
        """`cfg`: an EndpointConfig. `limiter`: LocalLimiter / RemoteLimiter (None: none).
        `max_concurrent`: overrides cfg.max_concurrent (the stage splits it across its actors).
        `api_key`: the key of cfg.api_key_env, as the driver read it (raveval.http.keys.read_key).
        `metric_tags`: run, model, stage, endpoint of the Ray metrics it records (http.metrics)."""
        self.cfg = cfg
        self.url = endpoint_url(cfg.base_url, "chat/completions")
        self.shown_url = public_url(self.url)  # what messages say: no credentials
        self.limiter = limiter
        self.max_concurrent = max_concurrent or cfg.max_concurrent
        self._headers = request_headers(cfg, api_key)
        self._session: Optional[aiohttp.ClientSession] = None
        self._loop = None
        self._sem: Optional[asyncio.Semaphore] = None
        self.requests_sent = 0
        self.metrics = EndpointMetrics({"endpoint": cfg.model, **(metric_tags or {})})

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"ChatClient({self.shown_url!r}, model={self.cfg.model!r})"

    def _ensure_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # Sessions and semaphores belong to one event loop.
            self._loop = loop
            connector = aiohttp.TCPConnector(limit=self.max_concurrent, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
            self._sem = asyncio.Semaphore(self.max_concurrent)
        return self._session

    def _backoff(self, retry: int) -> float:
        r = self.cfg.retry
        wait = min(r.backoff_max_s, r.backoff_s * (2 ** retry))
        return wait * (1 - r.jitter + r.jitter * random.random())

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                   top_p: Optional[float] = None, stop: Optional[list[str]] = None,
                   seed: Optional[int] = None, extra: Optional[dict] = None,
                   dataset: Optional[str] = None) -> ChatResult:
        """`dataset`: the row's dataset, a tag of the metrics this request records."""
        session = self._ensure_session()
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, **self.cfg.extra_body}
        if top_p is not None and top_p < 1.0:
            body["top_p"] = top_p
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        body.update(extra or {})
        data = json.dumps(body, ensure_ascii=False).encode()
        est = estimate_tokens(messages, max_tokens)
        t0 = time.perf_counter()
        retries = 0
        max_retries = self.cfg.retry.max_retries
        while True:
            wait, lease, outcome = None, None, "error"
            if self.limiter is not None:  # a slot of the endpoint's requests in flight, and the rate
                t_wait = time.perf_counter()
                lease, delay = await self.limiter.enter(est)
                if delay > 0:
                    await asyncio.sleep(delay)
                self.metrics.waited(time.perf_counter() - t_wait, dataset)
            try:
                async with self._sem:
                    self.requests_sent += 1
                    self.metrics.sent(dataset)
                    try:
                        async with session.post(self.url, data=data) as resp:
                            status, headers = resp.status, resp.headers
                            raw = await resp.read()
                    except asyncio.TimeoutError:
                        reason, status = f"timeout after {self.cfg.timeout_s:g}s", None
                    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                        reason, status = f"connection error ({type(e).__name__}: {e})", None
                    else:
                        if status == 200:
                            try:
                                reply = json.loads(raw)
                                choice = reply["choices"][0]
                                text = choice["message"]["content"]
                                if text is None:
                                    text = ""
                                if not isinstance(text, str):
                                    raise TypeError("content is not a string")
                            except (ValueError, KeyError, IndexError, TypeError) as e:
                                reason = f"malformed reply ({type(e).__name__}: {_snippet(raw, 120)})"
                            else:
                                outcome = "ok"
                                usage = reply.get("usage") or {}
                                pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
                                if self.limiter is not None and pt is not None and ct is not None:
                                    await self.limiter.correct(pt + ct - est)
                                return ChatResult(text, pt, ct, retries, time.perf_counter() - t0,
                                                  choice.get("finish_reason"))
                        elif status in RETRY_STATUS or status >= 500:
                            reason = f"HTTP {status}: {_snippet(raw)}"
                            advised = retry_after_s(headers) if status in (429, 503) else None
                            if status == 429:
                                self.metrics.got_429(dataset)
                            if status == 429 or advised is not None:
                                # The endpoint as a whole is over its limit: every caller waits.
                                outcome = "throttled"
                                wait = (self._backoff(retries) if advised is None else
                                        min(advised, self.cfg.retry.retry_after_max_s) * (1 + 0.1 * random.random()))
                                if self.limiter is not None:
                                    await self.limiter.pause(wait)
                                    await self.limiter.correct(-est)  # a refused request used no tokens
                        else:
                            raise RequestFailed(f"HTTP {status} (not retried): {_snippet(raw)}", retries, status)
            finally:
                if self.limiter is not None:
                    await self.limiter.leave(lease, outcome)
            if retries >= max_retries:
                raise RequestFailed(f"gave up after {retries} retries: {reason}", retries, status)
            await asyncio.sleep(self._backoff(retries) if wait is None else wait)
            retries += 1

    def close_now(self) -> None:
        """Close the connections without an event loop (actor teardown)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            connector = session.connector
            session.detach()
            if connector is not None:
                try:
                    connector._close()  # closes the transports at once; close() would need a loop
                except Exception:
                    pass

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
