"""The judge client against a real HTTP server on 127.0.0.1 (no Ray): the rate
limit is kept and used, every kind of fault is retried or reported, the key
is sent and never shown."""
from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import SecretStr

from raveval.config.secrets import redacted
from raveval.http.client import ChatClient, RequestFailed
from raveval.http.keys import MissingApiKey, read_key
from raveval.http.limiter import make_limiter
from fake_judge import FakeChatServer
from raveval.config.schema import EndpointConfig


def endpoint(server, **kw) -> EndpointConfig:
    retry = {"max_retries": 3, "backoff_s": 0.02, "backoff_max_s": 0.2, **kw.pop("retry", {})}
    return EndpointConfig(base_url=server.base_url, model="judge", timeout_s=kw.pop("timeout_s", 2.0),
                          retry=retry, **kw)


def run_requests(cfg, n: int, max_tokens: int = 16, api_key=None):
    async def main():
        client = ChatClient(cfg, make_limiter(cfg, shared=False), api_key=api_key)

        async def one(i):
            try:
                return await client.chat([{"role": "user", "content": f"question {i} [[rating]]"}], max_tokens=max_tokens)
            except RequestFailed as e:
                return e
        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.close()
    return asyncio.run(main())


def test_rate_limit_is_kept_and_used():
    rpm, n = 600, 60  # a 5 s window: the 6 s run spans more than one
    with FakeChatServer(requests_per_minute=rpm, window_s=5.0, latency_s=0.05) as srv:
        results = run_requests(endpoint(srv, requests_per_minute=rpm, max_concurrent=16), n)
        times = srv.times()
    assert all(not isinstance(r, Exception) for r in results)
    assert srv.outcomes() == {"ok": n}  # never over the server's limit, so never refused
    assert FakeChatServer.max_in_window(times, 5.0) <= rpm * 5 / 60
    assert FakeChatServer.rate_per_min(times) >= 0.9 * rpm
    assert srv.connections <= 16  # kept-alive connections are reused


@pytest.mark.parametrize("kind, reason", [
    ("500", "HTTP 500"),
    ("drop", "connection error"),
    ("slow", "timeout after 0.3s"),
    ("malformed", "malformed reply"),
])
def test_each_fault_is_retried_then_reported(kind, reason):
    with FakeChatServer(fault_rate=1.0, fault_kinds=(kind,), slow_s=1.0) as srv:
        # Only the slow case needs a short timeout (a busy machine may take longer than that to answer).
        [res] = run_requests(endpoint(srv, timeout_s=0.3 if kind == "slow" else 10, retry={"max_retries": 2}), 1)
        assert isinstance(res, RequestFailed) and res.retries == 2
        assert res.reason.startswith("gave up after 2 retries") and reason in res.reason
        assert len(srv.times()) == 3


def test_429_waits_for_retry_after_not_the_backoff():
    with FakeChatServer(fault_rate=1.0, fault_kinds=("429",), retry_after_s=0.6) as srv:
        t0 = time.monotonic()
        [res] = run_requests(endpoint(srv, retry={"max_retries": 1, "backoff_s": 0.01}), 1)
        assert isinstance(res, RequestFailed) and "HTTP 429" in res.reason
        t1, t2 = srv.times()
        assert t2 - t1 >= 0.6 and time.monotonic() - t0 < 3


def test_server_rate_limit_429_is_recovered_from():
    # The client thinks it may send 1200/min, the server allows 300/min: the
    # refused requests wait for Retry-After and all succeed.
    with FakeChatServer(requests_per_minute=300, window_s=1.0) as srv:
        results = run_requests(endpoint(srv, requests_per_minute=1200, retry={"max_retries": 10}), 20)
        assert all(not isinstance(r, Exception) for r in results)
        assert srv.outcomes()["rate_limited"] > 0 and sum(r.retries for r in results) == srv.outcomes()["rate_limited"]


def test_faults_end_as_results_or_errors_never_lost():
    with FakeChatServer(fault_rate=0.2, slow_s=2.0, retry_after_s=0.05, seed=7) as srv:
        results = run_requests(endpoint(srv, timeout_s=0.8, max_concurrent=32, retry={"max_retries": 4}), 100)
        assert len(results) == 100
        ok = [r for r in results if not isinstance(r, Exception)]
        assert len(ok) >= 95 and all(r.text.endswith("[[7]]") for r in ok)
        assert sum(r.retries for r in ok) > 0
        faults = sum(v for k, v in srv.outcomes().items() if k != "ok")
        assert faults >= 10


def test_token_budget_paces_by_tokens():
    tpm = 12_000  # 200 tokens/s
    with FakeChatServer() as srv:
        t0 = time.monotonic()
        results = run_requests(endpoint(srv, tokens_per_minute=tpm, rate_headroom=0.0), 20, max_tokens=40)
        wall = time.monotonic() - t0
        used = sum(r.prompt_tokens + r.completion_tokens for r in results)
    # Booked: estimates up front, corrected to the usage afterwards; one second of burst.
    assert wall >= (used - tpm / 60) / (tpm / 60) * 0.9
    assert wall < 30


def test_header_secrets_and_url_credentials_are_sent_and_never_shown():
    """`headers` values (typed secrets) go out as given; a base_url with a user and a
    query key works as given; neither shows in reprs or dumps."""
    with FakeChatServer() as srv:
        url = srv.base_url.replace("http://", "http://bob:pw-7a7a@") + "?key=q-7b7b"
        cfg = EndpointConfig(base_url=url, model="judge", timeout_s=2.0, headers={"api-key": "h-7c7c", "x-api-key": "h-7d7d"})
        [ok] = run_requests(cfg, 1)
        assert not isinstance(ok, Exception), ok
        sent = srv.log[-1]["headers"]
        assert sent["api-key"] == "h-7c7c" and sent["x-api-key"] == "h-7d7d"
        assert sent["Authorization"].startswith("Basic ")  # aiohttp sends the URL's user as basic auth
        assert not any(s in repr(ChatClient(cfg)) for s in ("pw-7a7a", "q-7b7b", "h-7c7c", "h-7d7d"))
        assert not any(s in text for s in ("h-7c7c", "h-7d7d") for text in (repr(cfg), cfg.model_dump_json()))
        saved = str(redacted(cfg))
        assert not any(s in saved for s in ("bob", "pw-7a7a", "q-7b7b", "h-7c7c", "h-7d7d"))


def test_api_key_is_sent_and_never_shown(monkeypatch):
    secret = "sk-test-9f8e7d6c"
    with FakeChatServer(api_key=secret) as srv:
        monkeypatch.setenv("RAVEVAL_TEST_KEY", secret)
        cfg = endpoint(srv, api_key_env="RAVEVAL_TEST_KEY")
        key = read_key(cfg, "judge j")
        [ok] = run_requests(cfg, 1, api_key=key)
        assert not isinstance(ok, Exception)
        client = ChatClient(cfg, api_key=key)
        shown = [repr(client), repr(cfg), cfg.model_dump_json(), repr(key), str(key), f"{key}", repr({"j": key})]
        assert not any(secret in s for s in shown)
        [bad] = run_requests(cfg, 1, api_key=SecretStr("sk-wrong-key"))
        assert isinstance(bad, RequestFailed) and bad.status == 401 and bad.retries == 0  # not retried
        assert "sk-wrong-key" not in bad.reason
        # The key is what the client was given, not what its own environment says.
        monkeypatch.delenv("RAVEVAL_TEST_KEY")
        [again] = run_requests(cfg, 1, api_key=key)
        assert not isinstance(again, Exception)
        with pytest.raises(MissingApiKey, match="RAVEVAL_TEST_KEY"):
            ChatClient(cfg)  # an endpoint that takes a key, and none was handed over
        with pytest.raises(MissingApiKey, match=r"^environment variable RAVEVAL_TEST_KEY \(api_key_env of judge j\)"):
            read_key(cfg, "judge j")
    assert read_key(endpoint(srv), "judge j") is None  # an endpoint without a key
