"""Preflight: before any generation, ask every endpoint the run will use (judges,
an API model under test) whether it answers, takes the key, and serves the
model, so a wrong key or URL is one line within seconds instead of error rows
after the whole generation pass.

One GET of the OpenAI-compatible `/models` per endpoint (no tokens spent). A
server without that route (404/405) is taken as reachable, its model unchecked.
"""
from __future__ import annotations

import asyncio
import json
from typing import Optional

import aiohttp
from pydantic import SecretStr

from raveval.config.secrets import public_url
from raveval.http.client import endpoint_url, request_headers

TIMEOUT_S = 10.0


class PreflightFailed(RuntimeError):
    """An endpoint the run needs does not answer, refuses the key, or lacks the model."""


async def check(cfg, api_key: Optional[SecretStr], who: str, timeout_s: float = TIMEOUT_S) -> Optional[str]:
    """None if endpoint `cfg` can be used; else why not, in one line naming `who`."""
    url = endpoint_url(cfg.base_url, "models")
    shown = public_url(cfg.base_url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers=request_headers(cfg, api_key)) as resp:
                status, raw = resp.status, await resp.read()
    except asyncio.TimeoutError:
        return f"{who}: {shown} did not answer within {timeout_s:g}s"
    except aiohttp.ClientError as e:
        return f"{who}: {shown} cannot be reached ({type(e).__name__}: {e})"
    if status in (401, 403):
        hint = f"check {cfg.api_key_env}" if cfg.api_key_env else "set api_key_env or headers"
        return f"{who}: {shown} refused the request (HTTP {status}): the key is wrong or missing; {hint}"
    if status in (404, 405):
        return None  # no model list on this server: reachable, model unchecked
    if status != 200:
        return f"{who}: {shown} answered HTTP {status} to GET /models: {raw[:200].decode('utf-8', 'replace')}"
    try:
        served = [m["id"] for m in json.loads(raw)["data"]]
    except (ValueError, KeyError, TypeError):
        return None  # a list in another shape: the server answers; leave the model to the first request
    if cfg.model not in served:
        listed = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "")
        return f"{who}: {shown} does not serve model {cfg.model!r} (it serves: {listed or 'nothing'})"
    return None


def preflight(endpoints: list[tuple[object, Optional[SecretStr], str]], timeout_s: float = TIMEOUT_S) -> None:
    """Check (endpoint config, key, who) all at once; raise PreflightFailed naming each failure."""
    if not endpoints:
        return

    async def run():
        return await asyncio.gather(*(check(cfg, key, who, timeout_s) for cfg, key, who in endpoints))

    failures = [why for why in asyncio.run(run()) if why]
    if failures:
        raise PreflightFailed("; ".join(failures) + " (preflight: false skips this check)")
