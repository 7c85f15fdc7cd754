"""MT-Bench (FastChat llm_judge layout): `question.jsonl` lines
{question_id, category, turns: [turn 1, turn 2], reference?: [answer 1, answer 2]}.

Each question is one row (subject = category); the model answers turn 1, then
turn 2 with its own turn-1 answer in the chat history, and both turns are
judged. Reference answers (math, reasoning, coding) come from the question's
`reference` field, or from `judge.reference_path`, a FastChat answer file
such as `reference_answer_gpt-4.jsonl`, which wins where it has the question.

Judged with FastChat's own judge prompts, read from `judge.prompts_path`
(`judge_prompts.jsonl`: single-v1, single-math-v1, pair-v2, pair-math-v1 and
their -multi-turn forms; the "math" prompts carry the reference answers), in
single grading ("[[rating]]") or pairwise ("[[A]]"/"[[B]]"/"[[C]]") against
the reference answers or another model's FastChat answer file.
"""
from __future__ import annotations

import json
from pathlib import Path

from raveval.config.schema import DatasetConfig
from raveval.tasks.verdicts import PAIR, RATING

from .common import DatasetError, Parsed, RowError, existing, make_row, read_jsonl, row_at
from .spec import OPEN_CHAT, Benchmark, JudgeMode, JudgeSetupError, Prompter, chat, no_config_path


def load_answers(path: Path) -> dict[str, list[str]]:
    """A FastChat answer file: lines {question_id, choices: [{turns: [...]}]} -> {row_id: turns}."""
    out = {}
    for lineno, obj in read_jsonl(path):
        try:
            turns = obj["choices"][0]["turns"]
            qid = obj["question_id"]
        except (KeyError, IndexError, TypeError):
            raise DatasetError(f"{path}: line {lineno}: expected question_id and choices[0].turns") from None
        if not isinstance(turns, list):
            raise DatasetError(f"{path}: line {lineno}: choices[0].turns is not a list")
        out[str(qid)] = [str(t) for t in turns]
    return out


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "mt_bench path", want_file=True)
    refs = {}
    if cfg.judge is not None and cfg.judge.reference_path:
        refs = load_answers(existing(cfg.judge.reference_path, "mt_bench judge.reference_path", want_file=True))
    rows, bad = [], []
    for lineno, obj in read_jsonl(path, bad):
        with row_at(bad, path, f"line {lineno}", str(obj.get("category") or "")):
            turns = obj.get("turns")
            if "question_id" not in obj or not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise RowError("expected question_id and turns (a list of strings)")
            row_id = str(obj["question_id"])
            row = make_row(str(obj.get("category") or ""), row_id, turns[0], [], "")
            row["turns"] = list(turns)
            row["reference"] = [str(x) for x in (refs.get(row_id) or obj.get("reference") or [])]
            rows.append(row)
    return Parsed(rows, {}, {}, bad)


# ---- judge prompts -----------------------------------------------------------
PROMPT_NAMES = {
    # (kind, multi_turn, with_reference) -> prompt name in judge_prompts.jsonl
    ("single", False, False): "single-v1",
    ("single", False, True): "single-math-v1",
    ("single", True, False): "single-v1-multi-turn",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", False, True): "pair-math-v1",
    ("pairwise", True, False): "pair-v2-multi-turn",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}


def load_judge_prompts(path: str | Path) -> dict[str, dict]:
    p = Path(path)
    if not p.is_file():
        raise JudgeSetupError(f"MT-Bench judge prompts not found: {p} (set judge.prompts_path)")
    prompts = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompts[obj["name"]] = {k: obj[k] for k in ("system_prompt", "prompt_template", "output_format", "type")}
        except (ValueError, KeyError) as e:
            raise JudgeSetupError(f"{p}: line {lineno}: not a judge prompt ({e})") from None
    missing = sorted(set(PROMPT_NAMES.values()) - set(prompts))
    if missing:
        raise JudgeSetupError(f"{p}: missing judge prompts {missing}")
    return prompts


def single_messages(prompts: dict, turns: list[str], answers: list[str], refs: list[str]) -> list[dict]:
    """Grade the answer to the last turn (turn len(answers)); refs: [] or one per turn."""
    t = len(answers)
    p = prompts[PROMPT_NAMES[("single", t > 1, bool(refs))]]
    if t == 1:
        kw = {"question": turns[0], "answer": answers[0]}
    else:
        kw = {"question_1": turns[0], "question_2": turns[1], "answer_1": answers[0], "answer_2": answers[1]}
    kw.update({f"ref_answer_{i + 1}": r for i, r in enumerate(refs[:2])})
    return chat(p["system_prompt"], p["prompt_template"].format(**kw))


def pair_messages(prompts: dict, turns: list[str], answers_a: list[str], answers_b: list[str],
                  refs: list[str]) -> list[dict]:
    t = len(answers_a)
    p = prompts[PROMPT_NAMES[("pairwise", t > 1, bool(refs))]]
    if t == 1:
        kw = {"question": turns[0], "answer_a": answers_a[0], "answer_b": answers_b[0]}
    else:
        kw = {"question_1": turns[0], "question_2": turns[1], "answer_a_1": answers_a[0],
              "answer_a_2": answers_a[1], "answer_b_1": answers_b[0], "answer_b_2": answers_b[1]}
    kw.update({f"ref_answer_{i + 1}": r for i, r in enumerate(refs[:2])})
    return chat(p["system_prompt"], p["prompt_template"].format(**kw))


def _judge_prompts(cfg: DatasetConfig) -> dict[str, dict]:
    if cfg.prompt.format != "chat":
        raise JudgeSetupError("mt_bench needs prompt.format: chat (turn 2 follows turn 1 in the chat)")
    if not cfg.judge.prompts_path:
        raise JudgeSetupError("mt_bench needs judge.prompts_path (FastChat's judge_prompts.jsonl)")
    no_config_path(cfg)
    return load_judge_prompts(cfg.judge.prompts_path)


def _prompts(cfg: DatasetConfig) -> str:
    return f"fastchat {Path(cfg.judge.prompts_path or 'judge_prompts.jsonl').name} ({cfg.judge.prompts_path})"


def _refs(cfg: DatasetConfig, row: dict, t: int) -> list[str]:
    """The reference answers of turns 1..t where the row's category is judged with them, else []."""
    refs = row["reference"]
    return refs[:t] if row["subject"] in cfg.judge.reference_categories and len(refs) >= t else []


def _single(cfg: DatasetConfig) -> Prompter:
    prompts = _judge_prompts(cfg)
    return lambda row, answers: single_messages(prompts, row["turns"], answers, _refs(cfg, row, len(answers)))


def _pairwise(cfg: DatasetConfig) -> Prompter:
    prompts = _judge_prompts(cfg)
    # Against the reference answers themselves, the prompt shows no reference.
    with_refs = cfg.judge.baseline_path is not None

    def messages(row: dict, first: list[str], second: list[str]) -> list[dict]:
        refs = _refs(cfg, row, len(first)) if with_refs else []
        return pair_messages(prompts, row["turns"], first, second, refs)
    return messages


BENCHMARK = Benchmark(
    name="mt_bench", load=load, family=OPEN_CHAT,
    judge_modes={"single": JudgeMode(RATING, _single, _prompts), "pairwise": JudgeMode(PAIR, _pairwise, _prompts)},
    baseline=lambda path, rows: load_answers(path),
)
