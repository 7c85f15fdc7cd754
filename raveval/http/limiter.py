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

`pause(s)` holds every request of the endpoint for `s` seconds: a 429, or a
503 with Retry-After, says the endpoint as a whole is over its limit.

`InFlight` caps the requests in flight to the endpoint, adapting like TCP's
congestion window: the cap halves on a throttled reply (once per second) and
grows back by one per cap's worth of successes, up to `max_concurrent`.

`LocalLimiter` holds a bucket and a cap in this process (unit tests,
one-process tools). `RemoteLimiter` uses a named, detached async Ray actor,
one per endpoint (and API key variable), created with `get_if_exists=True`:
every judge actor and API-model replica on every node, and every job on the
cluster, shares one budget, which outlives the job that created it.
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
        self._paused_until = -math.inf
        self.granted = 0

    def reserve(self, tokens: float = 0) -> float:
        """Book the earliest slot for one request of `tokens`; return seconds to wait for it."""
        now = self.clock()
        t = max(now, self._paused_until)
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

    def pause(self, seconds: float) -> None:
        """Grant nothing before `seconds` from now (the endpoint said it is over its limit)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)


class InFlight:
    """At most `cap` requests in flight; the cap adapts between 1 and `ceiling`.
    A lease not returned within `lease_s` (its holder died) is taken back."""

    def __init__(self, ceiling: int, lease_s: float, cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.ceiling, self.lease_s, self.cooldown_s, self.clock = ceiling, lease_s, cooldown_s, clock
        self.cap = float(ceiling)
        self.leases: dict[int, float] = {}
        self._next = 0
        self._last_cut = -math.inf

    def try_enter(self) -> Optional[int]:
        now = self.clock()
        for lease in [k for k, t in self.leases.items() if now - t > self.lease_s]:
            del self.leases[lease]
        if len(self.leases) >= int(self.cap):
            return None
        self._next += 1
        self.leases[self._next] = now
        return self._next

    def leave(self, lease: Optional[int], outcome: str) -> None:
        """`outcome`: "ok" (grow), "throttled" (halve, once per cooldown), else no change."""
        self.leases.pop(lease, None)
        if outcome == "ok":
            self.cap = min(float(self.ceiling), self.cap + 1.0 / self.cap)
        elif outcome == "throttled" and self.clock() - self._last_cut >= self.cooldown_s:
            self.cap = max(1.0, self.cap / 2)
            self._last_cut = self.clock()


class _Gate:
    """A bucket and an in-flight cap with the async interface the client uses:
    `enter` waits for a slot and books the rate (returning the lease and how long to
    wait before sending), `leave` returns the slot with the outcome, `pause` holds
    the endpoint. The limiter actor holds one; LocalLimiter is one."""

    def __init__(self, limits: dict, max_in_flight: int, lease_s: float):
        self.bucket = TokenBucket(**limits)
        self.in_flight = InFlight(max_in_flight, lease_s)
        self._changed: Optional[asyncio.Condition] = None

    async def enter(self, tokens: float = 0) -> tuple[int, float]:
        if self._changed is None:
            self._changed = asyncio.Condition()  # made on the loop that serves the calls
        async with self._changed:
            while (lease := self.in_flight.try_enter()) is None:
                try:  # woken by a leave, or look again for expired leases
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        return lease, self.bucket.reserve(tokens)

    async def leave(self, lease: Optional[int], outcome: str) -> None:
        self.in_flight.leave(lease, outcome)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def correct(self, delta_tokens: float) -> None:
        self.bucket.correct(delta_tokens)

    async def pause(self, seconds: float) -> None:
        self.bucket.pause(seconds)

    async def limits(self) -> dict:
        return {**self.bucket.limits, "max_in_flight": self.in_flight.ceiling}

    async def stats(self) -> dict:
        return {"granted": self.bucket.granted, "cap": self.in_flight.cap, "in_flight": len(self.in_flight.leases)}


class LocalLimiter(_Gate):
    """The endpoint's gate in this process."""


class _LimiterActor(_Gate):
    """The endpoint's gate for the whole cluster (an async actor: calls never block each other)."""


def limiter_name(base_url: str, model: str, api_key_env: Optional[str]) -> str:
    """One budget per (endpoint URL, model, API key variable): what providers limit on."""
    ident = f"{base_url.rstrip('/')}|{model}|{api_key_env or ''}"
    return "raveval-limiter-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


class RemoteLimiter:
    """Client side of the endpoint's limiter actor, found by name (or created).

    The actor is detached: it outlives the job that created it, so concurrent and
    later jobs keep one budget. If it is gone anyway (its node died), the next
    call creates it again.
    """

    def __init__(self, name: str, limits: dict, max_in_flight: int, lease_s: float):
        self.name = name
        self.limits = limits
        self.args = (limits, max_in_flight, lease_s)
        self._handle = None

    def handle(self):
        if self._handle is None:
            import ray

            actor = ray.remote(num_cpus=0, max_restarts=0)(_LimiterActor)
            self._handle = actor.options(name=self.name, namespace=NAMESPACE, get_if_exists=True,
                                         lifetime="detached", max_concurrency=1000).remote(*self.args)
        return self._handle

    async def _call(self, method: str, *args):
        from ray.exceptions import RayActorError

        for attempt in range(3):
            try:
                return await getattr(self.handle(), method).remote(*args)
            except RayActorError:
                self._handle = None  # gone: look it up / create it again
                if attempt == 2:
                    raise

    async def enter(self, tokens: float = 0) -> tuple[int, float]:
        return await self._call("enter", tokens)

    async def leave(self, lease: Optional[int], outcome: str) -> None:
        await self._call("leave", lease, outcome)

    async def correct(self, delta_tokens: float) -> None:
        if delta_tokens:
            await self._call("correct", delta_tokens)

    async def pause(self, seconds: float) -> None:
        await self._call("pause", seconds)

    async def shared_limits(self) -> dict:
        return await self._call("limits")


def bucket_limits(cfg) -> dict:
    """TokenBucket arguments from an EndpointConfig."""
    return {"requests_per_minute": cfg.requests_per_minute, "tokens_per_minute": cfg.tokens_per_minute,
            "burst": cfg.burst, "headroom": cfg.rate_headroom}


def make_limiter(cfg, shared: Optional[bool] = None):
    """The gate of an endpoint (rate limits and requests in flight): the cluster-wide
    actor when Ray runs, else in this process."""
    if shared is None:
        try:
            import ray

            shared = ray.is_initialized()
        except ImportError:
            shared = False
    limits = bucket_limits(cfg)
    # A lease outlives every attempt of a request: only a dead holder's is taken back.
    lease_s = cfg.timeout_s + 30.0
    if not shared:
        return LocalLimiter(limits, cfg.max_concurrent, lease_s)
    return RemoteLimiter(limiter_name(cfg.base_url, cfg.model, cfg.api_key_env), limits, cfg.max_concurrent, lease_s)


def ensure_shared_limiter(cfg):
    """Create (or find) the endpoint's limiter actor from the driver, before any
    caller asks it. Warns when an existing actor (another job's) has other limits."""
    import ray

    lim = make_limiter(cfg, shared=True)
    want = {**lim.limits, "max_in_flight": cfg.max_concurrent}
    have = ray.get(lim.handle().limits.remote())
    if have != want:
        log.warning("judge endpoint %s: a shared limiter with other limits exists (%s); it is used as is",
                    public_url(cfg.base_url), have)
    return lim
