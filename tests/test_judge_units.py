"""Judge stage pieces without Ray or HTTP: token bucket, verdict parsers,
judge prompts, verdict interpretation, subjective metrics, config checks."""
from __future__ import annotations

import json
import math

import pytest

from conftest import SHARED_DATA
from raveval.config.compose import ConfigError
from raveval.config.secrets import public_url
from raveval.run.config import load_config
from raveval.tasks import judging as tasks, verdicts as parse
from raveval.tasks.benchmarks import alignbench, alpacaeval, mt_bench
from raveval.http.limiter import TokenBucket, limiter_name
from raveval.tasks.length_control import lc_win_rate
from raveval.tasks.scoring import aggregate_subjective

MT_PROMPTS = SHARED_DATA / "mt_bench" / "judge_prompts.jsonl"
needs_mt_bench = pytest.mark.skipif(not MT_PROMPTS.is_file(), reason=f"no MT-Bench judge prompts at {MT_PROMPTS}")


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


# ---- token bucket ------------------------------------------------------------
def test_bucket_spaces_requests_evenly_and_bursts_only_as_configured():
    clock = FakeClock()
    b = TokenBucket(requests_per_minute=600, headroom=0.0, clock=clock)
    waits = [b.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    clock.t = 100.0  # idle: one request at once, not a pile of saved-up ones
    assert [b.reserve() for _ in range(2)] == pytest.approx([0.0, 0.1])
    burst = TokenBucket(requests_per_minute=600, burst=3, headroom=0.0, clock=clock)
    assert [burst.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])


def test_bucket_never_grants_more_than_the_limit_in_any_window():
    clock = FakeClock()
    b = TokenBucket(requests_per_minute=120, headroom=0.02, clock=clock)
    times = []
    for i in range(500):
        clock.t = i * 0.013  # callers arrive faster than allowed
        times.append(clock.t + b.reserve())
    from fake_judge import FakeChatServer

    assert FakeChatServer.max_in_window(times, 60.0) <= 120
    assert FakeChatServer.max_in_window(times, 10.0) <= 20
    assert FakeChatServer.rate_per_min(times) == pytest.approx(120 * 0.98, rel=1e-6)


def test_token_budget_books_estimates_and_corrections():
    clock = FakeClock()
    b = TokenBucket(tokens_per_minute=6000, headroom=0.0, clock=clock)  # 100 tokens/s, 1 s of burst
    assert b.reserve(100) == 0.0
    assert b.reserve(100) == pytest.approx(0.0)   # within the one-second tolerance
    assert b.reserve(100) == pytest.approx(1.0)
    b.correct(-200)  # the replies were shorter than estimated: time given back
    assert b.reserve(100) == pytest.approx(0.0)
    b.correct(500)
    assert b.reserve(10) == pytest.approx(6.0, abs=1e-6)  # 2 s booked + 5 s more, less 1 s of tolerance


def test_limiter_name_depends_on_endpoint_model_and_key_variable_not_key():
    a = limiter_name("http://x/v1/", "m", "KEY")
    assert a == limiter_name("http://x/v1", "m", "KEY")
    assert a != limiter_name("http://x/v1", "m2", "KEY") != limiter_name("http://x/v1", "m", "OTHER")


# ---- parsers -------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("Explanation... Rating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("first [[3]] then the final [[9]]", 9.0),
    ("Rating: [6]", 6.0),
    ("I would rate it 4/10.", 4.0),
    ("Rating: 5", 5.0),
    ("[[11]]", None),
    ("no verdict at all", None),
    ("", None),
])
def test_parse_rating(text, want):
    assert parse.parse_rating(text) == want


@pytest.mark.parametrize("text, want", [
    ("A is more detailed. [[A]]", "A"),
    ("[[B]]", "B"),
    ("Both fine. [[C]]", "tie"),
    ("At first [[A]] seemed right, but final verdict: [[B]]", "B"),
    ("[A]", "A"),
    ("B", "B"),
    ("It is a tie.", "tie"),
    ("I cannot decide", None),
])
def test_parse_pair(text, want):
    assert parse.parse_pair(text) == want


def test_parse_alignbench_python_and_json_dicts():
    text = "解释……\n{'事实正确性': 9, '满足用户需求': 6, '清晰度': 8, '完备性': 7, '综合得分': 7}"
    assert alignbench.parse_verdict(text) == (7.0, {"事实正确性": 9, "满足用户需求": 6, "清晰度": 8, "完备性": 7, "综合得分": 7})
    assert alignbench.parse_verdict('{"事实正确性": 5, "综合得分": 4}')[0] == 4.0
    assert alignbench.parse_verdict("综合得分：6 分")[0] == 6.0
    assert alignbench.parse_verdict("{'事实正确性': 9}") is None
    assert alignbench.parse_verdict("{'综合得分': 42}") is None


@pytest.mark.parametrize("text, want", [("m", "m"), ("M", "M"), (" `M` ", "M"), ("Output (m)", "m"), ("neither", None)])
def test_parse_alpaca(text, want):
    assert alpacaeval.parse_verdict(text) == want


def test_interpret_maps_verdicts_to_the_models_outcome():
    assert tasks.interpret("pair", "AB", "[[A]]")["outcome"] == 1.0
    assert tasks.interpret("pair", "BA", "[[A]]")["outcome"] == 0.0
    assert tasks.interpret("pair", "BA", "[[B]]")["outcome"] == 1.0
    assert tasks.interpret("pair", "AB", "[[C]]")["outcome"] == 0.5
    assert tasks.interpret("alpaca", "AB", "m")["outcome"] == 1.0
    assert tasks.interpret("alpaca", "BA", "m")["outcome"] == 0.0
    r = tasks.interpret("rating", "", "Rating: [[6]]")
    assert r["score"] == 6.0 and r["error"] is None
    bad = tasks.interpret("rating", "", "great answer")
    assert bad["score"] is None and "unparseable" in bad["error"]


# ---- prompts -------------------------------------------------------------------
@needs_mt_bench
def test_mt_bench_prompts_from_fastchat_file():
    prompts = mt_bench.load_judge_prompts(MT_PROMPTS)
    turns = ["What is 2+2?", "And times 3?"]
    one = mt_bench.single_messages(prompts, turns, ["4"], [])
    assert one[0]["content"] == "You are a helpful assistant." and "[[rating]]" in one[1]["content"]
    assert "What is 2+2?" in one[1]["content"] and "[The Start of Assistant's Answer]\n4\n" in one[1]["content"]
    two = mt_bench.single_messages(prompts, turns, ["4", "12"], ["4", "12"])
    assert "Reference answer" in two[1]["content"] and "second" in two[0]["content"]
    pair = mt_bench.pair_messages(prompts, turns, ["4"], ["5"], [])
    assert "[[A]]" in pair[0]["content"] and "Assistant A's Answer]\n4\n" in pair[1]["content"]


def test_alignbench_prompt_lists_the_dimensions_of_the_answer_type():
    msgs = alignbench.judge_messages("1+1等于几？", "2", "1+1=2", "数学计算", "初等数学")
    text = msgs[0]["content"]
    for dim in alignbench.DIMENSIONS["逻辑推理型回答"]:
        assert dim in text
    assert "综合得分" in text and "[参考答案开始]\n1+1=2" in text and "[助手的答案开始]\n2\n" in text


def test_alpaca_prompt_names_outputs_m_and_M():
    msgs = alpacaeval.judge_messages("Say hi", "hi", "hello")
    assert "## Output (m)\n\nhi" in msgs[1]["content"] and "## Output (M)\n\nhello" in msgs[1]["content"]


# ---- metrics -------------------------------------------------------------------
def test_lc_win_rate_equals_win_rate_without_length_differences():
    prefs = [1, 0, 1, 1, 0.5, 0] * 10
    lens = [100] * 60
    assert lc_win_rate(prefs, lens, lens) == pytest.approx(sum(prefs) / 60, abs=1e-3)
    # Six rows say little: cross-validation picks a strong penalty, and the
    # estimate shrinks to an even preference (as alpaca_eval's fit does).
    assert lc_win_rate(prefs[:6], lens[:6], lens[:6]) == pytest.approx(0.5, abs=1e-3)


def test_lc_win_rate_recovers_the_preference_at_equal_length():
    # A judge whose preference is logistic(0.3 + 2 tanh(length diff / sd)): the
    # model writes longer answers, so its raw win rate is inflated; the LC win
    # rate is the preference at equal length, logistic(0.3).
    import numpy as np

    model = [100 + 37 * (i % 11) for i in range(60)]
    base = [150 + 13 * (i % 7) for i in range(60)]
    delta = np.array(model, float) - np.array(base, float)
    x = np.tanh(delta / delta.std(ddof=1))
    prefs = list(1 / (1 + np.exp(-(0.3 + 2 * x))))
    raw = sum(prefs) / len(prefs)
    lc = lc_win_rate(prefs, model, base)
    assert lc == pytest.approx(1 / (1 + math.exp(-0.3)), abs=2e-3)
    assert raw > lc + 0.05
    # Nothing to learn from length when a model always wins: LC stays high.
    assert lc_win_rate([1, 1, 1, 0.5, 1], [100, 300, 50, 80, 120], [100] * 5) > 0.8


def test_subjective_aggregates_single_and_pairwise():
    rows = [
        {"subject": "math", "row_id": "1", "turn": 1, "score": 8.0, "error": None, "ratings": '{"事实正确性": 9}'},
        {"subject": "math", "row_id": "1", "turn": 2, "score": 6.0, "error": None, "ratings": None},
        {"subject": "writing", "row_id": "2", "turn": 1, "score": 4.0, "error": None, "ratings": None},
        {"subject": "writing", "row_id": "2", "turn": 2, "score": None, "error": "gave up after 5 retries: HTTP 500"},
    ]
    m = {r["metric"]: r for r in aggregate_subjective(rows, "single")}
    assert m["score"]["value"] == pytest.approx(6.0) and m["score"]["n"] == 3 and m["score"]["errors"] == 1
    assert m["score/turn1"]["value"] == 6.0 and m["score/turn2"]["errors"] == 1
    assert m["score/math"]["value"] == 7.0 and m["score_macro"]["value"] == pytest.approx(5.5)
    assert m["dim/事实正确性"]["value"] == 9.0

    def pr(row_id, order, outcome, err=None):
        return {"subject": "", "row_id": row_id, "turn": 1, "order": order, "outcome": outcome, "error": err,
                "model_len": 10, "baseline_len": 10}
    pairs = [pr("1", "AB", 1.0), pr("1", "BA", 1.0),   # win
             pr("2", "AB", 1.0), pr("2", "BA", 0.0),   # inconsistent: tie
             pr("3", "AB", 0.0), pr("3", "BA", 0.0),   # loss
             pr("4", "AB", 1.0), pr("4", "BA", None, "timeout")]  # error
    m = {r["metric"]: r for r in aggregate_subjective(pairs, "pairwise")}
    assert m["win_rate"]["value"] == pytest.approx(1 / 3) and m["win_rate"]["n"] == 3 and m["win_rate"]["errors"] == 1
    assert m["tie_rate"]["value"] == pytest.approx(1 / 3) and m["loss_rate"]["value"] == pytest.approx(1 / 3)
    assert m["win_rate_adjusted"]["value"] == pytest.approx(0.5)
    assert m["lc_win_rate"]["value"] == pytest.approx(0.5, abs=1e-3)
    assert math.isnan(aggregate_subjective([], "single")[0]["value"])


# ---- config --------------------------------------------------------------------
def test_judge_config_is_validated_and_names_the_key():
    with pytest.raises(ConfigError, match="no judge endpoint 'nope'"):
        load_config("eval_mt_bench", ["datasets.mt_bench_single.judge.endpoint=nope"])
    with pytest.raises(ConfigError) as e:
        load_config("eval_mt_bench", ["judges.gpt4o.requests_per_mintue=5"])
    assert "judges.gpt4o.requests_per_mintue: unknown key" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("eval_mt_bench", ["judges.gpt4o.retry.max_retries=-1"])
    assert "judges.gpt4o.retry.max_retries" in str(e.value)
    with pytest.raises(ConfigError, match="needs baseline_path"):
        load_config("eval_mt_bench", ["datasets.mt_bench_single.judge.baseline=gpt-3.5"])


def test_api_model_rejects_ll_datasets_at_config_time():
    with pytest.raises(ConfigError, match="engine 'openai'"):
        load_config("demo", ["model=gpt4o_mini_api"])
    cfg = load_config("demo", ["model=gpt4o_mini_api", "datasets=[demo_gsm8k_gen]"])
    assert cfg.model.api.api_key_env == "OPENAI_API_KEY"


def test_public_url_leaves_out_credentials():
    assert public_url("https://user:pw@api.example.com:8443/v1?key=AIza123&x=1") == \
        "https://***@api.example.com:8443/v1?key=***&x=***"
    assert public_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert public_url("results/demo") == "results/demo"


def test_judged_dataset_checks(tmp_path):
    cfg = load_config("eval_mt_bench", [f"work_dir={tmp_path}", "datasets.mt_bench_single.prompt.format=plain",
                                        f"data_root={SHARED_DATA}"])
    from raveval.run.plan import make_plan

    plan = make_plan(cfg)
    assert "prompt.format: chat" in plan.datasets[0].error
    cfg = load_config("eval_mt_bench", [f"work_dir={tmp_path}", f"data_root={tmp_path}"])
    assert "judge_prompts" in make_plan(cfg).datasets[0].error


def test_judge_check_reads_modes_and_verdicts_from_the_benchmark(tmp_path):
    from raveval.config.schema import DatasetConfig

    def d(loader, **judge):
        return DatasetConfig(loader=loader, path="x", mode="gen", prompt={"format": "chat"},
                             judge={"endpoint": "e", **judge})
    with pytest.raises(tasks.JudgeSetupError, match=r"loader 'mmlu' has no judge prompts \(use one of "
                                                     r"\['mt_bench', 'alignbench', 'alpacaeval'\]\)"):
        tasks.check("x", d("mmlu"))
    with pytest.raises(tasks.JudgeSetupError, match=r"judge.mode 'single' is not available for alpacaeval"):
        tasks.check("x", d("alpacaeval"))
    with pytest.raises(tasks.JudgeSetupError, match="judge.guided is not available for alignbench"):
        tasks.check("x", d("alignbench", guided=True))
    tasks.check("x", d("alpacaeval", mode="pairwise", guided=True))
    with pytest.raises(tasks.JudgeSetupError, match="baseline_path not found"):
        tasks.check("x", d("alpacaeval", mode="pairwise", baseline="b", baseline_path=str(tmp_path / "none.json")))
    # Every parser name a judgement row may carry reads back to one verdict.
    assert set(tasks.VERDICTS) == {"rating", "pair", "alignbench", "alpaca"}
    assert tasks.interpret("alignbench", "", "{'综合得分': 8}")["ratings"] == '{"综合得分": 8.0}'
    assert tasks.interpret("nope", "", "x")["error"] == "unknown parser 'nope'"


def test_judge_requests_cover_every_row_turn_and_order(tmp_path):
    """Rows whose answers are missing become requests with pre_error (never dropped)."""
    from raveval.run.plan import make_plan

    qfile = tmp_path / "question.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in [
        {"question_id": 1, "category": "math", "turns": ["1+1?", "times 3?"], "reference": ["2", "6"]},
        {"question_id": 2, "category": "writing", "turns": ["A poem.", "Shorter."]},
    ]))
    cfg = load_config("eval_mt_bench", [f"work_dir={tmp_path}", f"datasets.mt_bench_single.path={qfile}",
                                        "datasets.mt_bench_single.judge.mode=pairwise",
                                        "datasets.mt_bench_single.judge.reference_path=null",
                                        f"datasets.mt_bench_single.judge.prompts_path={tmp_path / 'p.jsonl'}"])
    (tmp_path / "p.jsonl").write_text("".join(
        json.dumps({"name": n, "type": "x", "system_prompt": "S", "prompt_template": "T{question_1}" if "multi" in n else "T",
                    "output_format": "[[A]]"}) + "\n" for n in mt_bench.PROMPT_NAMES.values()))
    plan = make_plan(cfg)
    d = plan.datasets[0]
    assert d.error is None and [r.turn for r in d.requests] == [1, 1]
    rows = {r["row_id"]: r for r in d.rows}
    second = tasks.next_turn(d, rows["1"], d.requests[0], "2", plan.model_id)
    assert second.turn == 2 and second.key != d.requests[0].key
    assert json.loads(second.prompt)[-2:] == [{"role": "assistant", "content": "2"}, {"role": "user", "content": "times 3?"}]
    judge = tasks.DatasetJudge(d, {"base_url": "u", "model": "j"}, "m")
    reqs = judge.row(rows["1"], ["2", "6"]) + judge.row(rows["2"], [], "replica lost")
    assert len(reqs) == 2 * 2 * 2 and len({r.key for r in reqs}) == 8
    ok = [r for r in reqs if r.pre_error is None]
    assert {(r.row_id, r.turn, r.order) for r in ok} == {("1", 1, "AB"), ("1", 1, "BA"), ("1", 2, "AB"), ("1", 2, "BA")}
    # Only the first turn answered: the second turn's judgements say so.
    partial = judge.row(rows["1"], ["2"], "timeout")
    assert [r.pre_error for r in partial if r.turn == 2] == ["model answer of turn 2 missing (timeout)"] * 2
    assert all("replica lost" in r.pre_error for r in reqs if r.row_id == "2")


# ---- loaders -------------------------------------------------------------------
@needs_mt_bench
def test_real_mt_bench_loads_with_reference_answers():
    from raveval.tasks.benchmarks import load_dataset

    cfg = load_config("eval_mt_bench", [f"data_root={SHARED_DATA}"]).datasets["mt_bench_single"]
    loaded = load_dataset("mt_bench_single", cfg)
    assert len(loaded.rows) == 80 and len({r["subject"] for r in loaded.rows}) == 8
    assert all(len(r["turns"]) == 2 for r in loaded.rows)
    with_ref = {r["subject"] for r in loaded.rows if len(r["reference"]) == 2}
    assert {"math", "reasoning", "coding"} <= with_ref


def test_subjective_loaders_name_the_bad_place(tmp_path):
    from raveval.tasks.benchmarks import DatasetError, load_dataset
    from raveval.config.schema import DatasetConfig

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 2, "turns": "b"}\n')
    loaded = load_dataset("m", DatasetConfig(loader="mt_bench", path=str(bad), mode="gen"))
    assert len(loaded.rows) == 1 and loaded.bad[0].error == f"{bad}: line 2: expected question_id and turns (a list of strings)"
    al = tmp_path / "a.json"
    al.write_text('[{"instruction": "x", "output": "y"}, {"output": "z"}]')
    loaded = load_dataset("a", DatasetConfig(loader="alpacaeval", path=str(al), mode="gen"))
    assert len(loaded.rows) == 1 and loaded.bad[0].row_id == "a.json:1" and "item 1" in loaded.bad[0].error
    al.write_text('{"instruction": "x"}')
    with pytest.raises(DatasetError, match="expected a JSON list"):
        load_dataset("a", DatasetConfig(loader="alpacaeval", path=str(al), mode="gen"))
    ab = tmp_path / "ab.jsonl"
    ab.write_text(json.dumps({"question": "q", "capability": "逻辑推理",
                              "others": {"subcategory": "推理", "reference": "r", "question_id": 9}}) + "\n")
    loaded = load_dataset("ab", DatasetConfig(loader="alignbench", path=str(ab), mode="gen"))
    assert loaded.rows[0]["row_id"] == "9" and loaded.rows[0]["reference"] == ["r"]
    assert loaded.groups == {"中文推理": ["逻辑推理"]}


def test_alignbench_reads_the_release_and_opencompass_layouts(tmp_path):
    from raveval.config.schema import DatasetConfig
    from raveval.tasks.benchmarks import load_dataset

    release = [{"question_id": 7, "category": "专业能力", "subcategory": "音乐", "question": "q7", "reference": "r7",
                "evidences": [{"url": "u", "quote": "x"}]},
               {"question_id": 8, "category": "数学计算", "subcategory": "初等数学", "question": "q8", "reference": "r8",
                "evidences": []},
               {"question_id": 9, "category": "专业能力", "subcategory": "历史", "question": "q9", "reference": ""},
               {"question_id": 10, "question": "no category"},
               {"id": 11, "prompt": "some other layout"}]
    path = tmp_path / "data_v1.1_release.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in release))
    loaded = load_dataset("ab", DatasetConfig(loader="alignbench", path=str(path), mode="gen"))
    assert [(r["row_id"], r["subject"], r["subcategory"], r["reference"]) for r in loaded.rows] == [
        ("7", "专业能力", "音乐", ["r7"]), ("9", "专业能力", "历史", []), ("8", "数学计算", "初等数学", ["r8"])]
    assert [b.row_id for b in loaded.bad] == ["data_v1.1_release.jsonl:4", "data_v1.1_release.jsonl:5"]
    assert "missing field(s) ['category', 'subcategory']" in loaded.bad[0].error
    assert "missing field(s) ['question_id', 'category', 'subcategory', 'question']" in loaded.bad[1].error
    assert "or use OpenCompass's (question, capability, others" in loaded.bad[1].error
    # limit counts per category (subject), as AlignBench and OpenCompass sample it.
    limited = load_dataset("ab", DatasetConfig(loader="alignbench", path=str(path), mode="gen", limit=1))
    assert sorted(r["subject"] for r in limited.rows) == ["专业能力", "数学计算"]

    oc = tmp_path / "oc.jsonl"
    oc.write_text(json.dumps({"question": "q", "capability": "逻辑推理",
                              "others": {"subcategory": "推理", "reference": "r", "question_id": 3}},
                             ensure_ascii=False) + "\n" + json.dumps({"question": "q", "capability": "x", "others": {}}) + "\n")
    loaded = load_dataset("oc", DatasetConfig(loader="alignbench", path=str(oc), mode="gen"))
    assert [(r["row_id"], r["subject"], r["subcategory"]) for r in loaded.rows] == [("3", "逻辑推理", "推理")]
    assert "['others.subcategory', 'others.question_id']" in loaded.bad[0].error


def test_alignbench_dimensions_by_subcategory_then_category():
    assert alignbench.dimensions_of("初等数学") == alignbench.DIMENSIONS["逻辑推理型回答"]
    assert alignbench.dimensions_of("新子类", "角色扮演") == alignbench.DIMENSIONS["生成型回答"]
    assert alignbench.dimensions_of("新子类", "综合问答") == alignbench.DIMENSIONS["建议型回答"]
    assert alignbench.dimensions_of("", "") == alignbench.DIMENSIONS["事实与解释型回答"]


def test_bucket_pause_holds_every_request():
    now = [100.0]
    b = TokenBucket(requests_per_minute=60, headroom=0, clock=lambda: now[0])
    assert b.reserve() == 0
    b.pause(5.0)
    assert b.reserve() == pytest.approx(5.0)  # the pause, not the 1 s interval
    assert b.reserve() == pytest.approx(6.0)  # and the rate after it


def test_in_flight_cap_halves_on_throttling_and_grows_back():
    from raveval.http.limiter import InFlight

    now = [0.0]
    g = InFlight(ceiling=8, lease_s=30, cooldown_s=1.0, clock=lambda: now[0])
    leases = [g.try_enter() for _ in range(8)]
    assert None not in leases and g.try_enter() is None  # at the cap
    g.leave(leases[0], "throttled")
    g.leave(leases[1], "throttled")  # within the cooldown: one cut per burst of 429s
    assert g.cap == 4.0 and len(g.leases) == 6 and g.try_enter() is None
    for lease in leases[2:]:
        g.leave(lease, "ok")
    assert 5.0 < g.cap < 6.0  # additive increase: about one per cap's worth of successes
    now[0] = 2.0
    held = [g.try_enter() for _ in range(5)]
    assert None not in held and g.try_enter() is None
    now[0] = 40.0  # the holders died: their leases expire
    assert g.try_enter() is not None
    for _ in range(200):
        g.leave(g.try_enter(), "ok")
    assert g.cap == 8.0  # never above the endpoint's max_concurrent
