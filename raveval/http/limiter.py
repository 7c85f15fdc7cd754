"""Rate limits per endpoint: requests per minute and tokens per minute.

`TokenBucket` is a token bucket written in its virtual-scheduling form (GCRA):
instead of counting tokens it keeps, per budget, the time at which the bucket
would be full again, and `reserve(tokens)` books the earliest slot that keeps
both budgets and returns how long to wait for it. A reservation is pure
arithmetic, so one shared bucket can serve many callers with one cheap call
each and no lock held while anyone waits:

- requests: one request every 60/rpm seconds, `burst` of them at once at most;
- tokens: the estimate (prompt + max_tokens, as API providers count it) is
  booked up front; `correct(actual - estimate)` books the difference once the
  reply's usage is known (a negative difference gives time back).

`headroom` paces a little under the limit (default 2%), so that the jitter
between a granted slot and the request's arrival at the server never makes a
sliding-window counter see more than the limit.

`LocalLimiter` uses a bucket in this process (unit tests, one-process tools).
`RemoteLimiter` uses a named async Ray actor, one per endpoint (and API key
variable), created with `get_if_exists=True`, so every judge actor and every
API-model replica on every node shares one budget.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import Callable, Optional

from raveval.config.secrets import public_url

log = logging.getLogger(__name__)

NAMESPACE = "raveval"


class TokenBucket:
    def __init__(
        self,
        requests_per_minute: Optional[float] = None,
        tokens_per_minute: Optional[float] = None,
        burst: int = 1,
        headroom: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ):
        if burst < 1:
            raise ValueError("burst must be >= 1")
        if not 0 <= headroom < 1:
            raise ValueError("headroom must be in [0, 1)")
        self.limits = {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute,
                       "burst": burst, "headroom": headroom}
        self.clock = clock
        scale = 1.0 - headroom
        # Seconds between requests; tolerance lets `burst` requests go at once.
        self.req_interval = 60.0 / (requests_per_minute * scale) if requests_per_minute else 0.0
        self.req_tolerance = (burst - 1) * self.req_interval
        # Tokens per second; the bucket holds one second's worth.
        self.tok_rate = tokens_per_minute * scale / 60.0 if tokens_per_minute else 0.0
        self.tok_tolerance = 1.0 if self.tok_rate else 0.0
        self._req_tat = -math.inf  # theoretical arrival time: when the bucket is full again
        self._tok_tat = -math.inf
        self.granted = 0

    def reserve(self, tokens: float = 0) -> float:
        """Book the earliest slot for one request of `tokens`; return seconds to wait for it."""
        now = self.clock()
        t = now
        if self.req_interval:
            t = max(t, self._req_tat - self.req_tolerance)
        if self.tok_rate and tokens > 0:
            t = max(t, self._tok_tat - self.tok_tolerance)
        if self.req_interval:
            self._req_tat = max(self._req_tat, t) + self.req_interval
        if self.tok_rate and tokens > 0:
            self._tok_tat = max(self._tok_tat, t) + tokens / self.tok_rate
        self.granted += 1
        return t - now

    def correct(self, delta_tokens: float) -> None:
        """Book `delta_tokens` more (or fewer, if negative) than reserved."""
        if self.tok_rate and delta_tokens:
            self._tok_tat += delta_tokens / self.tok_rate


class LocalLimiter:
    """A bucket in this process, with the async interface the client uses."""

    def __init__(self, bucket: TokenBucket):
        self.bucket = bucket

    async def acquire(self, tokens: float = 0) -> float:
        delay = self.bucket.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay

    async def correct(self, delta_tokens: float) -> None:
        self.bucket.correct(delta_tokens)


class _LimiterActor:
    """The shared bucket of one endpoint (an async actor: calls never block each other)."""

    def __init__(self, limits: dict):
        self.bucket = TokenBucket(**limits)

    async def reserve(self, tokens: float = 0) -> float:
        return self.bucket.reserve(tokens)

    async def correct(self, delta_tokens: float) -> None:
        self.bucket.correct(delta_tokens)

    async def limits(self) -> dict:
        return dict(self.bucket.limits)

    async def granted(self) -> int:
        return self.bucket.granted


def limiter_name(base_url: str, model: str, api_key_env: Optional[str]) -> str:
    """One budget per (endpoint URL, model, API key variable): what providers limit on."""
    ident = f"{base_url.rstrip('/')}|{model}|{api_key_env or ''}"
    return "raveval-limiter-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


class RemoteLimiter:
    """Client side of the shared limiter actor.

    The actor is found by name (or created, if it does not exist yet). When
    the actor is gone (its owner ended), the next call creates it again.
    """

    def __init__(self, name: str, limits: dict):
        self.name = name
        self.limits = limits
        self._handle = None

    def handle(self):
        if self._handle is None:
            import ray

            actor = ray.remote(num_cpus=0, max_restarts=0)(_LimiterActor)
            self._handle = actor.options(name=self.name, namespace=NAMESPACE, get_if_exists=True,
                                         max_concurrency=1000).remote(self.limits)
        return self._handle

    async def _call(self, method: str, *args):
        from ray.exceptions import RayActorError

        for attempt in range(3):
            try:
                return await getattr(self.handle(), method).remote(*args)
            except RayActorError:
                self._handle = None  # owner gone: look it up / create it again
                if attempt == 2:
                    raise

    async def acquire(self, tokens: float = 0) -> float:
        delay = await self._call("reserve", tokens)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay

    async def correct(self, delta_tokens: float) -> None:
        if delta_tokens:
            await self._call("correct", delta_tokens)

    async def shared_limits(self) -> dict:
        return await self._call("limits")


def bucket_limits(cfg) -> dict:
    """TokenBucket arguments from an EndpointConfig."""
    return {"requests_per_minute": cfg.requests_per_minute, "tokens_per_minute": cfg.tokens_per_minute,
            "burst": cfg.burst, "headroom": cfg.rate_headroom}


def make_limiter(cfg, shared: Optional[bool] = None):
    """The limiter of an endpoint: the cluster-wide actor when Ray runs, else
    in-process; None when the endpoint has no limits (nothing to wait for)."""
    if not cfg.requests_per_minute and not cfg.tokens_per_minute:
        return None
    if shared is None:
        try:
            import ray

            shared = ray.is_initialized()
        except ImportError:
            shared = False
    limits = bucket_limits(cfg)
    if not shared:
        return LocalLimiter(TokenBucket(**limits))
    return RemoteLimiter(limiter_name(cfg.base_url, cfg.model, cfg.api_key_env), limits)


def ensure_shared_limiter(cfg):
    """Create (or find) the endpoint's limiter actor from the driver, so that it
    lives as long as the driver and not as long as the first caller actor.
    Warns when an existing actor was created with other limits."""
    import ray

    lim = make_limiter(cfg, shared=True)
    if lim is None:
        return None
    have = ray.get(lim.handle().limits.remote())
    if have != lim.limits:
        log.warning("judge endpoint %s: a shared limiter with other limits exists (%s); it is used as is",
                    public_url(cfg.base_url), have)
    return lim
