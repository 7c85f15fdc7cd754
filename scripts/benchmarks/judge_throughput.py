"""Judge stage throughput under a rate limit.

N judge requests (MT-Bench style single grading) go through raveval's judge
stage (Ray Data judge caller actors, the shared limiter actor, aiohttp) to the
local test server, which enforces a sliding 60 s window of R requests per
minute and answers each request after a fixed latency. Prints the rate the
server saw against the limit (target: at least 0.95 of it), the most requests
it saw in any 60 s window, and the wall time against the ideal N / R.

    .venv/bin/python scripts/benchmarks/judge_throughput.py [--n 1000] [--rpm 600] [--latency 0.05]
    .venv/bin/python scripts/benchmarks/judge_throughput.py --mode client   # one process, no Ray

`--mode client` runs the same client in this process with an in-process
limiter: the difference to `stage` is the cost of Ray (actor start-up, the
limiter actor's round trips).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import sys
import time
from pathlib import Path

# The fault-injecting judge server is test tooling: it lives in tests/, not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from fake_judge import FakeChatServer  # noqa: E402
from raveval.config.schema import EndpointConfig, StreamConfig  # noqa: E402
from raveval.tasks.request import JudgeRequest  # noqa: E402


def judge_requests(n: int) -> list[JudgeRequest]:
    return [JudgeRequest(key=f"bench-{i}", model="m", dataset="bench", subject="", row_id=str(i), turn=1,
                         endpoint="bench", kind="single", order="", parser="rating",
                         messages=json.dumps([{"role": "system", "content": "You are a helpful assistant."},
                                              {"role": "user", "content": f"Rate answer {i} as [[rating]]: ..."}]),
                         max_tokens=64, temperature=0.0, guided=[], baseline="", model_len=0, baseline_len=0)
            for i in range(n)]


def run_stage(cfg: EndpointConfig, reqs: list[dict], work: str, callers: int, marks: dict) -> tuple[int, int]:
    from raveval.http.limiter import ensure_shared_limiter
    from raveval.stream.judge_stage import judge_stream
    from raveval.stream.cluster import init_ray
    from raveval.results.store import JUDGEMENTS, Store

    init_ray("local", temp_dir=tempfile.mkdtemp(prefix="rv-", dir="/tmp"))
    ensure_shared_limiter(cfg)
    marks["stage_start"] = time.monotonic()
    store = Store(work, JUDGEMENTS)
    judge_stream(reqs, {"bench": cfg.model_dump()}, {}, store, StreamConfig(batch_rows=16, callers=callers,
                                                                           calls_per_caller=4), log=lambda *_: None)
    rows = store.read(columns=["key", "error"]).to_pylist()
    return len(rows), sum(r["error"] is not None for r in rows)


def run_client(cfg: EndpointConfig, reqs: list[dict]) -> tuple[int, int]:
    from raveval.http.client import ChatClient, RequestFailed
    from raveval.http.limiter import make_limiter

    async def main():
        client = ChatClient(cfg, make_limiter(cfg, shared=False))

        async def one(r):
            try:
                await client.chat(json.loads(r.messages), max_tokens=r.max_tokens)
                return 0
            except RequestFailed:
                return 1
        try:
            errs = await asyncio.gather(*(one(r) for r in reqs))
        finally:
            await client.close()
        return len(errs), sum(errs)
    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rpm", type=float, default=600)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--mode", choices=["stage", "client"], default="stage")
    args = ap.parse_args()

    server = FakeChatServer(requests_per_minute=args.rpm, window_s=60.0, latency_s=args.latency)
    server.start()
    cfg = EndpointConfig(base_url=server.base_url, model="fake-judge", requests_per_minute=args.rpm,
                         max_concurrent=32, timeout_s=30, retry={"max_retries": 5, "backoff_s": 0.2})
    reqs = judge_requests(args.n)
    work = tempfile.mkdtemp(prefix="rv-judge-bench-")
    t0 = time.monotonic()
    marks = {"stage_start": t0}
    try:
        if args.mode == "stage":
            rows, errors = run_stage(cfg, reqs, work, args.callers, marks)
        else:
            rows, errors = run_client(cfg, reqs)
        t_end = time.monotonic()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    times = server.times()
    rate = FakeChatServer.rate_per_min(times)
    ideal = args.n / args.rpm * 60
    outcomes = dict(server.outcomes())
    print(f"judge throughput ({args.mode}): {args.n} requests, limit {args.rpm:g}/min, latency {args.latency * 1000:g} ms, "
          f"callers {args.callers if args.mode == 'stage' else 1}")
    print(f"  rows written: {rows} ({errors} errors); server saw {len(times)} requests {outcomes}; "
          f"{server.connections} connections")
    print(f"  achieved rate: {rate:.1f}/min = {rate / args.rpm:.3f} of the limit (target >= 0.95)")
    print(f"  most requests in any 60 s window: {FakeChatServer.max_in_window(times, 60.0)} (limit {args.rpm:g})")
    first, last = (min(times), max(times)) if times else (t0, t0)
    stage = t_end - marks["stage_start"]
    print(f"  wall: {stage:.1f}s for the judge stage vs ideal N/R {ideal:.1f}s = {stage / ideal:.3f}x "
          f"(first request {first - marks['stage_start']:.1f}s after the stage started, first to last "
          f"{last - first:.1f}s, last request to stage end {t_end - last:.1f}s)")
    if args.mode == "stage":
        print(f"  plus Ray start-up {marks['stage_start'] - t0:.1f}s (once per run; a run's model stream pays it)")


if __name__ == "__main__":
    main()
