"""Judging overlapped with generation, against each alone.

MT-Bench (80 two-turn questions) answered by the tiny model (Hugging Face
engine, `--tokens` new tokens a turn) and judged by the local test server,
which allows `--rpm` requests a minute (sliding window) and answers `--faults`
of them with an injected fault (429, 500, slow, malformed). Three runs, each
with its own local Ray and a fresh judge server:

  generation alone  both turns, no judge (the judge's key is not set, so its
                    judgements are error rows written at once)
  judging alone     the same work_dir with the key: every answer is reused,
                    only the 160 judgements are asked
  overlapped        a fresh work_dir, the whole run at once

Target: overlapped <= 1.15 x max(generation alone, judging alone).

    .venv/bin/python scripts/benchmarks/overlap.py [--data-root ../shared/data] [--rpm 120] [--tokens 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
# The fault-injecting judge server is test tooling: it lives in tests/, not in the package.
sys.path.insert(0, str(ROOT / "tests"))
from fake_judge import FakeChatServer  # noqa: E402

KEY_ENV = "RAVEVAL_BENCH_JUDGE_KEY"


def one_run(args, work: str, with_key: bool) -> dict:
    from raveval.results.store import JUDGEMENTS, Store
    from raveval.run.config import load_config
    from raveval.run.evaluate import run, shutdown

    with FakeChatServer(requests_per_minute=args.rpm, latency_s=args.latency, fault_rate=args.faults,
                        slow_s=2.0, seed=1) as srv:
        if with_key:
            os.environ[KEY_ENV] = "bench"
        else:
            os.environ.pop(KEY_ENV, None)
        cfg = load_config("eval_mt_bench", [
            f"data_root={args.data_root}", f"work_dir={work}", "preflight=false",
            f"datasets.mt_bench_single.generation.max_new_tokens={args.tokens}",
            f"judges.gpt4o.base_url={srv.base_url}", f"judges.gpt4o.api_key_env={KEY_ENV}",
            f"judges.gpt4o.requests_per_minute={args.rpm}", "judges.gpt4o.timeout_s=10",
            "judges.gpt4o.retry.backoff_s=0.2", "judges.gpt4o.retry.backoff_max_s=5"])
        t0 = time.monotonic()  # the server's clock
        try:
            result = run(cfg, log=(lambda m: print(f"  {time.monotonic() - t0:6.1f}s {m}")) if args.verbose
                         else (lambda *_: None))
        finally:
            shutdown(cfg)
        wall = time.monotonic() - t0
        sent = list(srv.log)
    judged = Store(work, JUDGEMENTS).read(columns=["key", "error"])
    ok = 0 if judged is None else judged.column("error").null_count
    over = FakeChatServer.max_in_window([e["t"] for e in sent], 60.0) > args.rpm
    first = min((e["t"] - t0 for e in sent), default=None)
    return {"wall_s": wall, "rows": result.stats.get("rows", 0), "judged_ok": ok, "sent": len(sent),
            "over_limit": over, "first_s": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--rpm", type=float, default=120.0, help="the judge's requests per minute")
    ap.add_argument("--faults", type=float, default=0.2, help="share of judge requests answered with a fault")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds the judge takes per answer")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per turn")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each run's log lines, timed")
    args = ap.parse_args()
    if not (Path(args.data_root) / "mt_bench" / "question.jsonl").is_file():
        sys.exit(f"no MT-Bench data under {args.data_root}/mt_bench (see ../shared/data/README)")

    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    split = tempfile.mkdtemp(prefix="raveval-overlap-split-")
    gen = one_run(args, split, with_key=False)
    judge = one_run(args, split, with_key=True)
    both = one_run(args, tempfile.mkdtemp(prefix="raveval-overlap-"), with_key=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<18} {'wall s':>8} {'model rows':>11} {'judgements ok':>14} {'requests':>9} {'over limit':>11} "
          f"{'first request s':>16}")
    for name, r in (("generation alone", gen), ("judging alone", judge), ("overlapped", both)):
        first = "-" if r["first_s"] is None else f"{r['first_s']:.1f}"
        print(f"{name:<18} {r['wall_s']:8.1f} {r['rows']:11d} {r['judged_ok']:14d} {r['sent']:9d} "
              f"{str(r['over_limit']):>11} {first:>16}")
    ratio = both["wall_s"] / max(gen["wall_s"], judge["wall_s"])
    print(f"overlapped / max(alone) = {ratio:.2f} (target <= 1.15); "
          f"sum of the two alone = {gen['wall_s'] + judge['wall_s']:.1f}s")


if __name__ == "__main__":
    main()
