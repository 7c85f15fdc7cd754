"""A driver of its own for tests/test_shared_budget.py: joins the cluster at ADDRESS
and sends N chat requests tagged TAG to the endpoint at BASE_URL through the
endpoint's shared limiter (as a judge stage does), 8 at a time. Prints one line
`RESULT {json}`.

    python tests/budget_driver.py ADDRESS BASE_URL TAG N RPM
"""
from __future__ import annotations

import asyncio
import json
import sys

import ray

from raveval.config.schema import EndpointConfig
from raveval.http.client import ChatClient, RequestFailed
from raveval.http.limiter import ensure_shared_limiter, make_limiter


def endpoint(base_url: str, rpm: float) -> EndpointConfig:
    return EndpointConfig(base_url=base_url, model="judge", requests_per_minute=rpm, rate_headroom=0.03,
                          max_concurrent=16, timeout_s=5.0,
                          retry={"max_retries": 8, "backoff_s": 0.05, "backoff_max_s": 0.5})


async def send(cfg: EndpointConfig, tag: str, n: int) -> dict:
    client = ChatClient(cfg, make_limiter(cfg), max_concurrent=8)
    work = asyncio.Queue()
    for i in range(n):
        work.put_nowait(i)
    done = {"ok": 0, "failed": 0, "retries": 0}

    async def worker():
        while not work.empty():
            i = work.get_nowait()
            try:
                r = await client.chat([{"role": "user", "content": f"{tag} {i}: rate [[rating]]"}], max_tokens=8)
                done["ok"] += 1
                done["retries"] += r.retries
            except RequestFailed:
                done["failed"] += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    await client.close()
    return done


def main(address: str, base_url: str, tag: str, n: int, rpm: float) -> None:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    cfg = endpoint(base_url, rpm)
    ensure_shared_limiter(cfg)
    print("RESULT " + json.dumps(asyncio.run(send(cfg, tag, n))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
