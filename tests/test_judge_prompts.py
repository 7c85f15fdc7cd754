"""Judge prompts from the files AlignBench and AlpacaEval publish (written here
in their published layouts; the real ones from the installed alpaca_eval
package where it is there), the summary and dry run naming the prompts used,
and our length-controlled win rate against alpaca_eval's own."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raveval.config.schema import DatasetConfig
from raveval.tasks import judging
from raveval.tasks.benchmarks import alignbench, alpacaeval
from raveval.tasks.benchmarks.spec import FALLBACK, JudgeSetupError
from raveval.tasks.length_control import lc_win_rate, length_controlled
from raveval.tasks.scoring import aggregate_subjective


def has_alpaca_eval() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("alpaca_eval") is not None
    except ValueError:
        return False


needs_alpaca_eval = pytest.mark.skipif(
    not has_alpaca_eval(),
    reason="alpaca_eval not installed (scripts/setup_env.sh installs it; RAVEVAL_ALPACA_EVAL=none skips it)")

# ---- AlpacaEval ----------------------------------------------------------------
# An annotator prompt in alpaca_eval's published form (evaluators_configs/*/*.txt).
CLF_PROMPT = '''<|im_start|>system
You pick the better output.
<|im_end|>
<|im_start|>user
## Instruction

{
    "instruction": """{instruction}""",
}

## Model Outputs

{
    {"model_identifier": "m", "output": """{output_1}"""},
    {"model_identifier": "M", "output": """{output_2}"""}
}

Answer m or M.
<|im_end|>'''


def annotator(root: Path, name: str, body: str) -> Path:
    """evaluators_configs/<name>/ with configs.yaml naming a prompt under evaluators_configs/."""
    (root / "clf").mkdir(parents=True, exist_ok=True)
    (root / "clf" / "clf.txt").write_text(CLF_PROMPT)
    folder = root / name
    folder.mkdir()
    (folder / "configs.yaml").write_text(body)
    return folder


def alpaca_cfg(**judge) -> DatasetConfig:
    return DatasetConfig(loader="alpacaeval", path="x", mode="gen", prompt={"format": "chat"},
                         judge={"endpoint": "e", "mode": "pairwise", **judge})


def test_alpaca_prompt_file_becomes_chat_messages(tmp_path):
    (tmp_path / "clf.txt").write_text(CLF_PROMPT)
    prompter = judging.benchmark("alpacaeval").judge_modes["pairwise"].setup(
        alpaca_cfg(prompts_path=str(tmp_path / "clf.txt")))
    row = {"question": "Say {output_2} twice"}
    msgs = prompter(row, ["hi {instruction}"], ["hello"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == "You pick the better output."
    user = msgs[1]["content"]
    # Filled in one pass: text that looks like a placeholder stays as it is; literal braces kept.
    assert '"instruction": """Say {output_2} twice""",' in user
    assert '"output": """hi {instruction}"""}' in user and '"output": """hello"""}' in user
    assert user.startswith("## Instruction\n\n{") and user.endswith("Answer m or M.")
    assert judging.prompts_used(alpaca_cfg(prompts_path=str(tmp_path / "clf.txt"))) == \
        f"alpaca_eval clf.txt ({tmp_path / 'clf.txt'})"
    assert judging.prompts_used(alpaca_cfg()) == FALLBACK
    # The verdict of that prompt is read as before: m is the output shown first.
    assert judging.interpret("alpaca", "AB", "m")["outcome"] == 1.0


def test_alpaca_annotator_folder_and_bad_files(tmp_path):
    configs = tmp_path / "evaluators_configs"
    folder = annotator(configs, "weighted_clf", 'weighted_clf:\n  prompt_template: "clf/clf.txt"\n'
                                                '  completions_kwargs:\n    max_tokens: 1\n')
    msgs = alpacaeval.fill(alpacaeval.load_judge_prompt(folder), "I", "A", "B")
    assert msgs[1]["content"].count('"""A"""') == 1 and msgs[1]["content"].count('"""B"""') == 1
    assert judging.prompts_used(alpaca_cfg(prompts_path=str(folder))) == f"alpaca_eval annotator weighted_clf ({folder})"

    fn = annotator(tmp_path / "fn_configs", "ranker_fn", 'ranker_fn:\n  prompt_template: "clf/clf.txt"\n'
                                                        '  completions_kwargs:\n    tools: []\n')
    with pytest.raises(JudgeSetupError, match="annotator ranker_fn answers with a function call"):
        alpacaeval.load_judge_prompt(fn)
    with pytest.raises(JudgeSetupError, match="no configs.yaml"):
        alpacaeval.load_judge_prompt(tmp_path)
    (tmp_path / "half.txt").write_text("<|im_start|>user\n{instruction} {output_1}<|im_end|>")
    with pytest.raises(JudgeSetupError, match=r"half.txt: not an AlpacaEval judge prompt: .*\{output_2\}"):
        alpacaeval.load_judge_prompt(tmp_path / "half.txt")
    (tmp_path / "batch.txt").write_text("{instruction}{output_1}{output_2}\n{instruction}{output_1}{output_2}")
    with pytest.raises(JudgeSetupError, match="batched prompt"):
        alpacaeval.load_judge_prompt(tmp_path / "batch.txt")
    (tmp_path / "role.txt").write_text("<|im_start|>judge\n{instruction}{output_1}{output_2}<|im_end|>")
    with pytest.raises(JudgeSetupError, match="unknown chat role 'judge'"):
        alpacaeval.load_judge_prompt(tmp_path / "role.txt")
    # At plan time: a missing file fails the dataset's setup, naming the key.
    with pytest.raises(JudgeSetupError, match=r"not found: .*nope.txt \(judge.prompts_path\)"):
        judging.check("a", alpaca_cfg(prompts_path=str(tmp_path / "nope.txt")))
    with pytest.raises(JudgeSetupError, match="config_path is read by alignbench only"):
        judging.check("a", alpaca_cfg(config_path=str(tmp_path)))


@needs_alpaca_eval
def test_real_alpaca_eval_annotator_builds_the_messages_alpaca_eval_builds():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import alpaca_eval
        import pandas as pd
        from alpaca_eval import utils

    configs = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    folder = configs / "weighted_alpaca_eval_gpt4_turbo"
    ours = alpacaeval.fill(alpacaeval.load_judge_prompt(folder), "Name a color.", "Blue.", "It is {red}.")
    template = (configs / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt").read_text()
    df = pd.DataFrame([{"instruction": "Name a color.", "output_1": "Blue.", "output_2": "It is {red}."}])
    prompts, _ = utils.make_prompts(df, template)
    assert ours == utils.prompt_to_chatml(prompts[0])
    with pytest.raises(JudgeSetupError, match="function call"):
        alpacaeval.load_judge_prompt(configs / "alpaca_eval_gpt4_turbo_fn")


# ---- AlignBench ------------------------------------------------------------------
# AlignBench's layout: judge.py at the repository root holds the prompt in a
# string literal; config/multi-dimension.json names the tables by root-relative paths.
JUDGE_PY = '''
import json

def prompt_construct(sample, config):
    dim_description = ""
    base_prompt = "你是评判者。回答类型是{category}，维度:\\n{dimensions}" \\
        "最后返回 {{'维度一': 打分, ..., '综合得分': 打分}}。\\n" \\
        "用户的提问： {question}\\n" \\
        "[参考答案开始]\\n{reference}\\n[参考答案结束]\\n" \\
        "[助手的答案开始]\\n{answer}\\n[助手的答案结束]\\n"
    return base_prompt
'''


def alignbench_repo(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "judge.py").write_text(JUDGE_PY, encoding="utf-8")
    tables = {
        "dimension_set.json": {"逻辑推理型回答": ["事实正确性", "逻辑连贯性"], "事实与解释型回答": ["事实正确性", "清晰度"]},
        "dimension_definition.json": {"事实正确性": "信息准确。", "逻辑连贯性": "前后一致。", "清晰度": "表达清楚。"},
        "subcategory_question_mapping.json": {"初等数学": "逻辑推理型回答", "生物医学": "事实与解释型回答"},
    }
    for name, table in tables.items():
        (root / "config" / name).write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    (root / "config" / "multi-dimension.json").write_text(json.dumps({
        "OpenAI": {"api_key": "", "api_url": "https://example.invalid/v1/chat/completions"},
        "Paths": {"dimension_set_filepath": "config/dimension_set.json",
                  "dimension_def_filepath": "config/dimension_definition.json",
                  "subcategory_mapping": "config/subcategory_question_mapping.json",
                  "model_answer_dir": "data/model_answer", "model_judgement_dir": "data/judgment"}}))
    return root


def align_cfg(**judge) -> DatasetConfig:
    return DatasetConfig(loader="alignbench", path="x", mode="gen", prompt={"format": "chat"},
                         judge={"endpoint": "e", "mode": "single", **judge})


ROW = {"question": "1+1等于几？", "reference": ["2"], "subject": "数学计算", "subcategory": "初等数学"}


def test_alignbench_official_prompt_and_dimensions(tmp_path):
    repo = alignbench_repo(tmp_path / "AlignBench")
    cfg = align_cfg(prompts_path=str(repo / "judge.py"), config_path=str(repo / "config" / "multi-dimension.json"))
    judging.check("align", cfg)
    msgs = judging.benchmark("alignbench").judge_modes["single"].setup(cfg)(ROW, ["等于2。"])
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    assert msgs[0]["content"] == (
        "你是评判者。回答类型是数学计算，维度:\n1. 事实正确性: 信息准确。\n2. 逻辑连贯性: 前后一致。\n"
        "最后返回 {'维度一': 打分, ..., '综合得分': 打分}。\n用户的提问： 1+1等于几？\n"
        "[参考答案开始]\n2\n[参考答案结束]\n[助手的答案开始]\n等于2。\n[助手的答案结束]\n")
    assert judging.prompts_used(cfg) == (f"alignbench official (prompt {repo / 'judge.py'}; "
                                         f"dimensions {repo / 'config' / 'multi-dimension.json'})")
    # The reply that prompt asks for is read with its dimensions.
    r = judging.interpret("alignbench", "", "分析……\n{'事实正确性': 9, '逻辑连贯性': 6, '综合得分': 7}")
    assert r["score"] == 7.0 and json.loads(r["ratings"]) == {"事实正确性": 9.0, "逻辑连贯性": 6.0, "综合得分": 7.0}

    # The config folder works too, and a subcategory the mapping lacks takes its category's type.
    dims = alignbench.load_dimensions(repo / "config")
    assert dims.of("未知", "数学计算") == ["事实正确性", "逻辑连贯性"] and dims.of("生物医学") == ["事实正确性", "清晰度"]
    # Only the dimensions given: our wording on AlignBench's tables, and said so.
    half = align_cfg(config_path=str(repo / "config"))
    text = judging.benchmark("alignbench").judge_modes["single"].setup(half)(ROW, ["2"])[0]["content"]
    assert "1. 事实正确性：信息准确。\n2. 逻辑连贯性：前后一致。\n" in text and "[参考答案开始]\n2" in text
    assert judging.prompts_used(half) == f"{FALLBACK} with alignbench dimensions ({repo / 'config'})"
    assert judging.prompts_used(align_cfg()) == FALLBACK


def test_alignbench_template_file_without_answer_gets_the_answer_block(tmp_path):
    # OpenCompass's copy of the prompt ends at the reference; the answer block is appended.
    (tmp_path / "prompt.txt").write_text("类型{category}\n{dimensions}问：{question}\n参考：{reference}\n", encoding="utf-8")
    template = alignbench.load_judge_template(tmp_path / "prompt.txt")
    msgs = alignbench.official_messages(template, alignbench.OURS, "问题", "答案", "参考", "专业能力", "生物医学")
    assert msgs[0]["content"].endswith("参考：参考\n[助手的答案开始]\n答案\n[助手的答案结束]\n")
    assert "1. 事实正确性: " in msgs[0]["content"]


def test_alignbench_bad_files_name_the_file(tmp_path):
    repo = alignbench_repo(tmp_path / "AlignBench")
    (tmp_path / "other.py").write_text("prompt = 'x'\n")
    with pytest.raises(JudgeSetupError, match=r"other.py: no `base_prompt"):
        alignbench.load_judge_template(tmp_path / "other.py")
    (tmp_path / "t.txt").write_text("{question} {dimensions} {score}")
    with pytest.raises(JudgeSetupError, match=r"t.txt: a judge template uses .*unknown \['score'\]"):
        alignbench.load_judge_template(tmp_path / "t.txt")
    (repo / "config" / "dimension_definition.json").write_text(json.dumps({"事实正确性": "x"}))
    with pytest.raises(JudgeSetupError, match=r"multi-dimension.json: its tables disagree: dimensions without a "
                                              r"definition \['清晰度', '逻辑连贯性'\]"):
        alignbench.load_dimensions(repo / "config" / "multi-dimension.json")
    (repo / "config" / "multi-dimension.json").write_text("{}")
    with pytest.raises(JudgeSetupError, match="expected \"Paths\""):
        alignbench.load_dimensions(repo / "config")
    with pytest.raises(JudgeSetupError, match=r"AlignBench config not found: .*nope"):
        judging.check("align", align_cfg(config_path=str(tmp_path / "nope")))


# ---- dry run and summary name the prompts ----------------------------------------
def test_dry_run_and_summary_name_the_judge_prompts(tmp_path):
    from raveval.results.summary import markdown, summarize
    from raveval.run.config import load_config
    from raveval.run.plan import describe, make_plan

    data = tmp_path / "alpaca_eval.json"
    data.write_text(json.dumps([{"instruction": f"Task {i}", "output": "ref", "dataset": "oasst"} for i in range(3)]))
    (tmp_path / "clf.txt").write_text(CLF_PROMPT)
    cfg = load_config("demo", [f"work_dir={tmp_path}", "datasets=[demo_gsm8k_gen]"])
    judge = {"endpoint": "gpt4o", "mode": "pairwise"}
    dump = cfg.model_dump()
    cfg = cfg.model_validate({**dump, "judges": {"gpt4o": {"base_url": "http://127.0.0.1:9/v1", "model": "j"}},
                              "datasets": {
        "ours": {"loader": "alpacaeval", "path": str(data), "mode": "gen", "prompt": {"format": "chat"},
                 "judge": judge},
        "official": {"loader": "alpacaeval", "path": str(data), "mode": "gen", "prompt": {"format": "chat"},
                     "judge": {**judge, "prompts_path": str(tmp_path / "clf.txt")}}}})
    plan = make_plan(cfg)
    text = describe(plan)
    assert f"judge prompts: {FALLBACK}" in text
    assert f"judge prompts: alpaca_eval clf.txt ({tmp_path / 'clf.txt'})" in text
    summary, _ = summarize(plan, None, None)  # the judge pass never ran: every row an error
    notes = {(r["dataset"], r["metric"]): r["note"] for r in summary.to_pylist() if r["note"]}
    assert notes[("ours", "win_rate")] == f"judge prompts: {FALLBACK}"
    assert notes[("official", "win_rate")] == f"judge prompts: alpaca_eval clf.txt ({tmp_path / 'clf.txt'})"
    md = markdown(summary)
    assert f"\nNotes:\n- ours win_rate: judge prompts: {FALLBACK}\n" in md


# ---- length-controlled win rate ---------------------------------------------------
def annotations(n: int = 200, seed: int = 0) -> list[dict]:
    """A fixed set: a judge that likes long answers, some ties, lengths 50..3000 characters."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        model, base = rng.randint(50, 3000), rng.randint(200, 2000)
        p = 1 / (1 + math.exp(-(-0.4 + 1.5 * math.tanh((model - base) / 800))))
        pref = 0.5 if rng.random() < 0.1 else float(rng.random() < p)
        rows.append({"index": i, "preference": pref, "model_len": model, "baseline_len": base})
    return rows


# Runs alpaca_eval offline: its GLM data (df_gamed.csv, fetched from the hub) is a
# made-up file in a hub cache of the test's own, with instruction difficulties
# and a few gamed-baseline annotations.
ALPACA_SCRIPT = textwrap.dedent('''
    import json, os, random, sys, warnings
    cache, rows = sys.argv[1], json.loads(sys.argv[2])
    commit = "0" * 40
    repo = os.path.join(cache, "datasets--tatsu-lab--alpaca_eval")
    os.makedirs(os.path.join(repo, "refs")); os.makedirs(os.path.join(repo, "snapshots", commit))
    open(os.path.join(repo, "refs", "main"), "w").write(commit)
    rng = random.Random(1)
    with open(os.path.join(repo, "snapshots", commit, "df_gamed.csv"), "w") as f:
        f.write("model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\\n")
        for i in range(len(rows)):
            f.write(f"gamed,{i},{rng.random():.4f},{rng.gauss(0, 1):.4f},{rng.gauss(0, 1):.4f},False\\n")
    warnings.simplefilter("ignore")
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate
    from raveval.tasks.length_control import length_controlled
    df = pd.DataFrame({"preference": [1 + r["preference"] for r in rows],
                       "output_1": ["x" * r["baseline_len"] for r in rows],
                       "output_2": ["x" * r["model_len"] for r in rows], "index": [r["index"] for r in rows],
                       "generator_1": "base", "generator_2": "model", "annotator": "judge"})
    kw = dict(save_weights_dir=None, is_warn_extreme_changes=False)
    minimal = get_length_controlled_winrate(df.copy(), glm_name="length_controlled_minimal", **kw)
    v1 = get_length_controlled_winrate(df.copy(), **kw)
    bridged = length_controlled([r["preference"] for r in rows], [r["model_len"] for r in rows],
                                [r["baseline_len"] for r in rows], [str(r["index"]) for r in rows])
    print(json.dumps({"minimal": minimal["length_controlled_winrate"] / 100,
                      "v1": v1["length_controlled_winrate"] / 100, "bridged": bridged}))
''')


@needs_alpaca_eval
def test_lc_win_rate_equals_alpaca_evals(tmp_path):
    rows = annotations()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", ALPACA_SCRIPT, str(tmp_path / "hub"), json.dumps(rows)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ours = lc_win_rate([r["preference"] for r in rows], [r["model_len"] for r in rows],
                       [r["baseline_len"] for r in rows])
    raw = sum(r["preference"] for r in rows) / len(rows)
    # Ours is alpaca_eval's GLM without the leaderboard's data: its length_controlled_minimal.
    assert ours == pytest.approx(got["minimal"], abs=1e-3)
    assert abs(ours - raw) > 0.02  # the length term does move it
    # Where alpaca_eval and its GLM data are there, the summary's value is its leaderboard GLM's.
    value, note = got["bridged"]
    assert value == pytest.approx(got["v1"], abs=1e-9) and note.startswith("alpaca_eval 0.6.6 length_controlled_v1")


def test_lc_note_says_which_glm(tmp_path):
    pairs = [{"subject": "", "row_id": str(i), "turn": 1, "order": "AB", "outcome": float(i % 3 == 0), "error": None,
              "model_len": 100 + 10 * i, "baseline_len": 150} for i in range(12)]
    m = {r["metric"]: r for r in aggregate_subjective(pairs, "pairwise")}
    assert m["lc_win_rate"]["note"] == "raveval GLM (alpaca_eval's length_controlled_minimal form)"
    # AlpacaEval's rows: alpaca_eval's GLM is tried; here it cannot be had (not installed,
    # or its GLM data is not in this offline hub cache), so ours is used and the note says why.
    m = {r["metric"]: r for r in aggregate_subjective(pairs, "pairwise", instruction_index=True)}
    assert m["lc_win_rate"]["note"].startswith("raveval GLM (alpaca_eval's length_controlled_minimal form); alpaca_eval ")
    assert m["lc_win_rate"]["value"] == pytest.approx(length_controlled(
        [p["outcome"] for p in pairs], [p["model_len"] for p in pairs], [150] * 12)[0])
