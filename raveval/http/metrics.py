"""Ray metrics (Prometheus: each node's metrics port, the dashboard, Grafana)
recorded where things happen, in whichever Ray process that is: the driver,
a judge caller actor, a Serve replica.

`metric` makes one `ray.util.metrics` object per name and process; outside
Ray (unit tests, tools) it returns None and nothing is recorded.
`EndpointMetrics` counts a chat endpoint's traffic from `ChatClient`:
requests sent (each attempt), 429 replies, and the seconds requests waited
for the endpoint's limiter (a slot in flight, the rate budget, a 429 pause).
"""
from __future__ import annotations

import sys
import threading
from typing import Optional

_made: dict[str, object] = {}
_lock = threading.Lock()  # two runs' threads of one driver may ask for the same metric at once


def metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]):
    """The `ray.util.metrics.<kind>` called `name` in this process, or None when Ray
    does not run here (importing Ray only to record nothing would cost a second)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    with _lock:
        if name not in _made:
            from ray.util import metrics

            _made[name] = getattr(metrics, kind)(name, description=description, tag_keys=tag_keys)
        return _made[name]


ENDPOINT_TAGS = ("run", "model", "dataset", "stage", "endpoint")


class EndpointMetrics:
    """A chat endpoint's traffic, tagged by run, model under test, dataset, stage
    (judge, or model for an API model) and endpoint name. Tags the client does not
    know are empty (an API model's replica serves rows of any run and dataset)."""

    def __init__(self, tags: Optional[dict] = None):
        self.tags = {k: str((tags or {}).get(k) or "") for k in ENDPOINT_TAGS}
        self.requests = metric("Counter", "raveval_endpoint_requests",
                               "HTTP requests sent to a chat endpoint (every attempt, retries included)", ENDPOINT_TAGS)
        self.throttled = metric("Counter", "raveval_endpoint_429s", "429 (rate limited) replies of a chat endpoint",
                                ENDPOINT_TAGS)
        self.wait = metric("Counter", "raveval_limiter_wait_seconds",
                           "Seconds requests waited for the endpoint's limiter (in-flight slot, rate, 429 pause)",
                           ENDPOINT_TAGS)

    def _inc(self, m, value: float, dataset: Optional[str]) -> None:
        if m is not None and value:
            m.inc(value, tags={**self.tags, "dataset": dataset} if dataset else self.tags)

    def sent(self, dataset: Optional[str] = None) -> None:
        self._inc(self.requests, 1, dataset)

    def got_429(self, dataset: Optional[str] = None) -> None:
        self._inc(self.throttled, 1, dataset)

    def waited(self, seconds: float, dataset: Optional[str] = None) -> None:
        self._inc(self.wait, seconds, dataset)
