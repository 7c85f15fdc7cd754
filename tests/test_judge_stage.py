"""The judge stage on a real local Ray: judge caller actors, the shared limiter
actor, a real HTTP judge server on 127.0.0.1 that enforces a rate limit and
injects faults; then whole runs (MT-Bench, an API model, a local judge served
by the model's own Serve deployment with guided decoding)."""
from __future__ import annotations

import json
import socket
import threading

import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from raveval.stream.judge_stage import judge_stream
from fake_judge import FakeChatServer
from raveval.config.schema import EndpointConfig, StreamConfig
from raveval.tasks.request import JudgeRequest
from raveval.results.store import JUDGEMENTS, Store

MT_BENCH = SHARED_DATA / "mt_bench"


def endpoint(server, **kw) -> dict:
    retry = {"max_retries": 4, "backoff_s": 0.05, "backoff_max_s": 0.5, **kw.pop("retry", {})}
    return EndpointConfig(base_url=server.base_url, model="judge", timeout_s=kw.pop("timeout_s", 5.0),
                          retry=retry, **kw).model_dump()


def requests(n: int, tag: str, endpoint_name: str = "j") -> list[JudgeRequest]:
    return [JudgeRequest(key=f"{tag}-{i}", model="m", dataset="d", subject="", row_id=str(i), turn=1,
                         endpoint=endpoint_name, kind="single", order="", parser="rating",
                         messages=json.dumps([{"role": "user", "content": f"{tag} {i}: [[rating]]"}]),
                         max_tokens=16, temperature=0.0, guided=[], baseline="", model_len=0, baseline_len=0)
            for i in range(n)]


def stream(reqs, endpoints, work, **settings):
    from raveval.http.limiter import ensure_shared_limiter

    for cfg in endpoints.values():
        ensure_shared_limiter(EndpointConfig.model_validate(cfg))
    store = Store(work, JUDGEMENTS)
    stats = judge_stream(reqs, endpoints, {}, store, StreamConfig(**settings), log=lambda *_: None)
    return stats, store.read().to_pylist()


def test_stage_keeps_the_rate_and_reaches_it(ray_local, tmp_path):
    rpm, n = 600, 60
    with FakeChatServer(requests_per_minute=rpm, window_s=5.0, latency_s=0.05) as srv:
        # A 5 s window allows 50 requests: 2% headroom is one request (100 ms of delay
        # between the limiter's grant and the server), too little on a loaded 2-core CI box.
        ep = endpoint(srv, requests_per_minute=rpm, rate_headroom=0.06)
        stats, rows = stream(requests(n, "rate"), {"j": ep}, tmp_path,
                             callers=2, calls_per_caller=2, batch_rows=8)
        times = srv.times()
    assert sorted(r["key"] for r in rows) == sorted(f"rate-{i}" for i in range(n))
    assert all(r["error"] is None and r["score"] == 7.0 for r in rows)
    assert srv.outcomes() == {"ok": n}
    assert FakeChatServer.max_in_window(times, 5.0) <= rpm * 5 / 60
    assert FakeChatServer.rate_per_min(times) >= 0.9 * rpm


def test_faults_never_lose_or_duplicate_a_row(ray_local, tmp_path):
    n = 80
    with FakeChatServer(fault_rate=0.2, slow_s=2.5, retry_after_s=0.1, seed=3) as srv:
        cfg = endpoint(srv, timeout_s=1.0, retry={"max_retries": 2, "backoff_s": 0.05})
        stats, rows = stream(requests(n, "fault"), {"j": cfg}, tmp_path, callers=2, calls_per_caller=2, batch_rows=10)
        outcomes = srv.outcomes()
    keys = [r["key"] for r in rows]
    assert len(keys) == n and set(keys) == {f"fault-{i}" for i in range(n)}
    for r in rows:
        if r["error"] is None:
            assert r["score"] == 7.0 and r["raw"].endswith("[[7]]")
        else:
            assert r["score"] is None and r["error"].startswith("gave up after 2 retries")
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 0.1 * n
    assert stats["judged"] == n and stats["judge_errors"] == sum(r["error"] is not None for r in rows)
    assert sum(r["retries"] for r in rows) > 0


def test_two_concurrent_stages_share_one_budget(ray_local, tmp_path):
    rpm, n = 480, 60  # each stage alone would need 7.5 s: their actors' start-up may differ by seconds
    with FakeChatServer(requests_per_minute=rpm, window_s=5.0, latency_s=0.02) as srv:
        cfg = endpoint(srv, requests_per_minute=rpm, rate_headroom=0.06)  # see the test above
        results = {}

        def run(tag):
            results[tag] = stream(requests(n, tag), {"j": cfg}, tmp_path / tag, callers=1, calls_per_caller=2,
                                  batch_rows=5)

        threads = [threading.Thread(target=run, args=(t,)) for t in ("one", "two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        log = list(srv.log)
    assert sorted(results) == ["one", "two"]
    assert all(len(rows) == n and all(r["error"] is None for r in rows) for _, rows in results.values())
    assert srv.outcomes() == {"ok": 2 * n}
    times = [e["t"] for e in log]
    by_stage = {tag: [e["t"] for e in log if e["body"]["messages"][0]["content"].startswith(tag + " ")]
                for tag in ("one", "two")}
    # Each stage alone would send at the full rate: together they never exceed it ...
    assert FakeChatServer.max_in_window(times, 5.0) <= rpm * 5 / 60
    # ... and while both send (their actors may start at different times), they share it.
    lo, hi = max(min(ts) for ts in by_stage.values()), min(max(ts) for ts in by_stage.values())
    assert hi - lo >= 3.0, f"the two stages overlapped for {hi - lo:.1f}s only"
    both = [t for t in times if lo <= t <= hi]
    each = {tag: FakeChatServer.rate_per_min([t for t in ts if lo <= t <= hi]) for tag, ts in by_stage.items()}
    rate = FakeChatServer.rate_per_min(both)
    assert rate >= 0.9 * rpm, f"{rate:.0f}/min over the {hi - lo:.1f}s overlap (per stage {each})"
    assert all(r < 0.75 * rpm for r in each.values()), each


# ---- whole runs --------------------------------------------------------------------
@pytest.mark.skipif(not (MT_BENCH / "judge_prompts.jsonl").is_file(), reason=f"no MT-Bench data at {MT_BENCH}")
def test_mt_bench_run_judges_both_turns(ray_local, tmp_path):
    from raveval.run import evaluate as pipeline
    from raveval.run.config import load_config

    with FakeChatServer(requests_per_minute=1200, latency_s=0.01) as srv:
        cfg = load_config("eval_mt_bench", [
            f"work_dir={tmp_path}", f"data_root={SHARED_DATA}", "datasets.mt_bench_single.limit=1",
            "datasets.mt_bench_single.subjects=[math,writing,coding]",
            "datasets.mt_bench_single.generation.max_new_tokens=8",
            f"judges.gpt4o.base_url={srv.base_url}", "judges.gpt4o.api_key_env=null"])
        result = pipeline.run(cfg, log=lambda *_: None)
        sent = srv.log
    assert not result.failed
    preds = Store(tmp_path).read().to_pylist()
    assert sorted((r["row_id"], r["turn"]) for r in preds) == sorted((q, t) for q in ("81", "111", "121") for t in (1, 2))
    turn2 = [r for r in preds if r["turn"] == 2]
    first = {r["row_id"]: r for r in preds if r["turn"] == 1}
    for r in turn2:  # the turn-1 answer is in the history of turn 2
        chat = json.loads(r["prompt"])
        assert chat[-2] == {"role": "assistant", "content": first[r["row_id"]]["prediction"]} and chat[-1]["role"] == "user"
    judged = pq.read_table(tmp_path / "judgements").to_pylist()
    assert len(judged) == 6 and all(j["score"] == 7.0 and j["raw"] and j["error"] is None for j in judged)
    assert all(j["prompt_tokens"] > 0 and j["retries"] == 0 for j in judged)
    # FastChat's prompts: math and coding with the reference answer, turn 2 as a multi-turn prompt.
    bodies = [json.dumps(s["body"]) for s in sent]
    assert sum("Reference Answer" in b for b in bodies) == 4 and sum("Conversation with User" in b for b in bodies) == 3
    summary = {r["metric"]: r for r in pq.read_table(tmp_path / "summary.parquet").to_pylist()}
    assert summary["score"]["value"] == 7.0 and summary["score"]["n"] == 6 and summary["score"]["errors"] == 0
    assert {"score/turn1", "score/turn2", "score/math", "score/writing", "score_macro"} <= set(summary)
    assert "| tiny-llama | mt_bench_single | score | 7.00 | 6 | 0 |" in (tmp_path / "summary.md").read_text()
    again = pipeline.run(cfg, log=lambda *_: None)
    assert again.stats["rows"] == 0 and again.stats["judged"] == 0 and again.summary.equals(result.summary)
    assert again.stats["reused"] == 6  # both turns' rows, not the first turn's only


def test_api_model_under_test_alpacaeval_pairwise_and_alignbench(ray_local, tmp_path):
    """engine: openai as the model under test; AlpacaEval pairwise (both orders,
    our fallback prompt) and AlignBench per-dimension grading (AlignBench's own
    prompt and dimension files), judged by the same server; the summary names
    the prompts each used."""
    from test_judge_prompts import alignbench_repo

    from raveval.run import evaluate as pipeline
    from raveval.run.config import load_config

    repo = alignbench_repo(tmp_path / "AlignBench")

    data = tmp_path / "alpaca_eval.json"
    data.write_text(json.dumps([{"instruction": f"Write {i} words.", "output": "word " * (i + 1), "generator": "ref",
                                 "dataset": "helpful_base" if i % 2 else "oasst"} for i in range(6)]))

    align = tmp_path / "alignbench.jsonl"
    align.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"question": "1+1等于几？", "capability": "数学计算",
         "others": {"subcategory": "初等数学", "reference": "2", "question_id": 1}},
        {"question": "写一首关于春天的短诗。", "capability": "文本写作",
         "others": {"subcategory": "创意文体写作", "reference": "春风拂面……", "question_id": 2}},
        {"question": "解释光合作用。", "capability": "专业能力",
         "others": {"subcategory": "生物医学", "reference": "", "question_id": 3}},
    ]))

    def responder(messages, body):
        text = messages[-1]["content"]
        if "Output (m)" in text:
            return "m"  # a judge with a position bias: both orders cancel it
        if "综合得分" in text:
            return "分析……\n{'事实正确性': 8, '满足用户需求': 6, '综合得分': 7}" if "春天" not in text else "无法评价"
        return "Sure: " + text[:20]

    with FakeChatServer(latency_s=0.01, responder=responder) as srv:
        cfg = load_config("demo", [
            f"work_dir={tmp_path}", "model=gpt4o_mini_api", f"model.api.base_url={srv.base_url}",
            "model.api.api_key_env=null", "datasets=[demo_gsm8k_gen]",
            "datasets.demo_gsm8k_gen.limit=2"])
        data_cfg = {"loader": "alpacaeval", "path": str(data), "mode": "gen", "prompt": {"format": "chat"},
                    "judge": {"endpoint": "t", "mode": "pairwise", "max_tokens": 4}}
        align_cfg = {"loader": "alignbench", "path": str(align), "mode": "gen", "prompt": {"format": "chat"},
                     "judge": {"endpoint": "t", "mode": "single", "prompts_path": str(repo / "judge.py"),
                               "config_path": str(repo / "config")}}
        cfg = cfg.model_validate({**cfg.model_dump(), "datasets": {**cfg.model_dump()["datasets"], "alpaca": data_cfg,
                                                                   "align": align_cfg},
                                  "judges": {"t": endpoint(srv, requests_per_minute=3000)}})
        result = pipeline.run(cfg, log=lambda *_: None)
    assert not result.failed, result.failed
    preds = Store(tmp_path).read().to_pylist()
    assert len(preds) == 2 + 6 + 3 and all(r["prediction"].startswith("Sure: ") and r["error"] is None for r in preds)
    judged = pq.read_table(tmp_path / "judgements").to_pylist()
    pairs = [j for j in judged if j["dataset"] == "alpaca"]
    assert len(pairs) == 12 and {j["order"] for j in pairs} == {"AB", "BA"}
    graded = {j["row_id"]: j for j in judged if j["dataset"] == "align"}
    assert graded["1"]["score"] == 7.0 and json.loads(graded["1"]["ratings"])["满足用户需求"] == 6
    assert graded["2"]["error"].startswith("unparseable verdict") and graded["2"]["raw"] == "无法评价"
    a = {r["metric"]: r for r in result.summary.to_pylist() if r["dataset"] == "align"}
    assert a["score"]["value"] == 7.0 and a["score"]["n"] == 2 and a["score"]["errors"] == 1
    assert a["dim/事实正确性"]["value"] == 8.0 and a["score/中文推理"]["value"] == 7.0 and a["score/文本写作"]["errors"] == 1
    m = {r["metric"]: r for r in result.summary.to_pylist() if r["dataset"] == "alpaca"}
    # The judge always says "m" (first position): each row is a win in one order, a loss in the other.
    assert m["win_rate"]["value"] == 0 and m["tie_rate"]["value"] == 1 and m["win_rate_adjusted"]["value"] == 0.5
    assert m["lc_win_rate"]["value"] == pytest.approx(0.5, abs=0.01) and m["win_rate"]["n"] == 6
    assert {"win_rate/helpful_base", "win_rate/oasst"} <= set(m)
    assert m["win_rate"]["note"] == "judge prompts: raveval fallback wording"
    # Not AlpacaEval's GLM data here (offline): our GLM, and the note says so.
    assert m["lc_win_rate"]["note"].startswith("judge prompts: raveval fallback wording; raveval GLM")
    assert a["score"]["note"] == f"judge prompts: alignbench official (prompt {repo / 'judge.py'}; dimensions {repo / 'config'})"
    assert "1. 事实正确性: 信息准确。\n2. 逻辑连贯性: 前后一致。" in json.loads(graded["1"]["messages"])[0]["content"]
    gsm = {r["metric"]: r for r in result.summary.to_pylist() if r["dataset"] == "demo_gsm8k_gen"}
    assert gsm["accuracy"]["n"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_judge_route_with_guided_verdicts(ray_local, tmp_path):
    """The model's own Serve deployment answers /v1/chat/completions over HTTP;
    with guided decoding even a random tiny model always gives a parseable verdict."""
    import asyncio

    from ray import serve

    from raveval.run.config import load_config
    from raveval.http.client import ChatClient, RequestFailed
    from raveval.serving.deploy import deploy, wait_ready

    port = _free_port()
    serve.shutdown()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False})
    try:
        cfg = load_config("demo", [f"work_dir={tmp_path}", "model.http_route=/judge", "model.name=tiny-judge"])
        app = deploy(cfg.model, 16, run_id="tiny-judge-test")
        assert app == "raveval-tiny-judge-test"
        asyncio.run(wait_ready(app))
        judge = EndpointConfig(base_url=f"http://127.0.0.1:{port}/judge/v1", model="tiny-judge", timeout_s=120,
                               retry={"max_retries": 5, "backoff_s": 0.5})

        async def ask():
            client = ChatClient(judge)
            try:
                free = await client.chat([{"role": "user", "content": "Rate: [[rating]]"}], max_tokens=6)
                msgs = [[{"role": "user", "content": f"Answer {i}. Rate it 1-10 as [[rating]]."}] for i in range(6)]
                guided = await asyncio.gather(*(client.chat(m, max_tokens=32, extra={
                    "structured_outputs": {"choice": [f"[[{k}]]" for k in range(1, 11)]}}) for m in msgs))
                try:
                    await client.chat([{"role": "user", "content": "x"}], max_tokens=4, extra={"stream": True})
                except RequestFailed as e:
                    bad = e
                return free, guided, bad
            finally:
                await client.close()

        free, guided, bad = asyncio.run(ask())
        assert free.completion_tokens >= 1 and free.prompt_tokens > 1
        from raveval.tasks.verdicts import parse_rating

        assert all(parse_rating(g.text) is not None and g.text.startswith("[[") for g in guided)
        assert bad.status == 400 and bad.retries == 0
    finally:
        serve.shutdown()
        serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
