"""What the judge stage has to do for a dataset, computed from its rows and the
model's stored predictions:

- `followup_requests`: multi-turn rows (MT-Bench): the request of turn k is
  the chat of turns 1..k-1 with the model's own answers, then turn k;
- `judge_requests`: one request per (row, turn) for single grading, one per
  (row, turn, order) for pairwise comparison; a judgement that cannot be
  asked (the model's or the baseline's answer is missing) is a row with
  `pre_error` set, so it is counted as an error row and never lost;
- `interpret`: the verdict of a judge reply (score / A,B,tie -> the model's
  outcome), keeping the raw text.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from raveval.tasks import verdicts as parse
from raveval.tasks import judge_prompts as jp

SUBJECTIVE_LOADERS = ("mt_bench", "alignbench", "alpacaeval")
MODES = {"mt_bench": ("single", "pairwise"), "alignbench": ("single",), "alpacaeval": ("pairwise",)}


class JudgeSetupError(ValueError):
    pass


def check(name: str, d) -> None:
    """Config checks of a judged dataset that need no model output (run at plan time)."""
    j = d.judge
    if j is None:
        return
    if d.loader not in SUBJECTIVE_LOADERS:
        raise JudgeSetupError(f"judge: loader {d.loader!r} has no judge prompts (use one of {list(SUBJECTIVE_LOADERS)})")
    if j.mode not in MODES[d.loader]:
        raise JudgeSetupError(f"judge.mode {j.mode!r} is not available for {d.loader} (have: {list(MODES[d.loader])})")
    if d.mode != "gen":
        raise JudgeSetupError("a judged dataset needs mode: gen")
    if d.loader == "mt_bench":
        if d.prompt.format != "chat":
            raise JudgeSetupError("mt_bench needs prompt.format: chat (turn 2 follows turn 1 in the chat)")
        if not j.prompts_path:
            raise JudgeSetupError("mt_bench needs judge.prompts_path (FastChat's judge_prompts.jsonl)")
        jp.load_mt_bench_prompts(j.prompts_path)
    if j.guided and d.loader == "alignbench":
        raise JudgeSetupError("judge.guided is not available for alignbench (its verdict is a score dict)")
    if j.baseline_path and not Path(j.baseline_path).is_file():
        raise JudgeSetupError(f"judge.baseline_path not found: {j.baseline_path}")


def n_turns(row: dict) -> int:
    return len(row.get("turns") or [row["question"]])


# ---- multi-turn ------------------------------------------------------------
def followup_requests(dplan, turn: int, preds: dict[str, dict], model_id: dict) -> list[dict]:
    """Requests of `turn` (>= 2) for rows whose turn-1..turn-1 answers exist."""
    from raveval.results.store import row_key

    by_turn = {(r["row_id"], r.get("turn", 1)): r for r in dplan.requests}
    out = []
    for row in dplan.rows:
        if n_turns(row) < turn or (row["row_id"], turn) in by_turn:
            continue
        prev = by_turn.get((row["row_id"], turn - 1))
        pred = preds.get(prev["key"]) if prev else None
        if pred is None or pred.get("error") or pred.get("prediction") is None:
            continue  # no answer to build on: the judgement of this turn becomes an error row
        messages = json.loads(prev["prompt"]) + [
            {"role": "assistant", "content": pred["prediction"]},
            {"role": "user", "content": row["turns"][turn - 1]},
        ]
        text = json.dumps(messages, ensure_ascii=False)
        out.append({**prev, "turn": turn, "prompt": text,
                    "key": row_key(model_id, dplan.name, row["row_id"], text, [], prev["params"], prev["mode"])})
    return out


# ---- judge requests ----------------------------------------------------------
def load_baseline(dplan) -> Optional[dict[str, list[str]]]:
    """{row_id: answers by turn} of the pairwise baseline model (None: the reference answers)."""
    j = dplan.cfg.judge
    if j.mode != "pairwise" or not j.baseline_path:
        return None
    if dplan.cfg.loader == "mt_bench":
        from raveval.tasks.benchmarks.mt_bench import load_answers

        return load_answers(Path(j.baseline_path))
    from raveval.tasks.benchmarks.alpacaeval import load_baseline as load_outputs

    outputs = load_outputs(Path(j.baseline_path))
    return {r["row_id"]: [outputs[r["question"]]] for r in dplan.rows if r["question"] in outputs}


def judge_key(endpoint: dict, req: dict) -> str:
    blob = json.dumps([endpoint.get("base_url"), endpoint.get("model"), req["model"], req["dataset"], req["row_id"],
                       req["turn"], req["order"], req["parser"], req["messages"], req["max_tokens"],
                       req["temperature"], req["guided"]], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def judge_requests(dplan, preds: dict[str, dict], endpoint: dict, model: str,
                   mt_prompts: Optional[dict] = None, baseline: Optional[dict] = None) -> list[dict]:
    """All judgements of one dataset (see the module doc). `endpoint`: the EndpointConfig as a dict."""
    d, j = dplan.cfg, dplan.cfg.judge
    loader = d.loader
    by_turn = {(r["row_id"], r.get("turn", 1)): r for r in dplan.requests}
    out = []
    for row in dplan.rows:
        turns = row.get("turns") or [row["question"]]
        refs = list(row.get("reference") or [])
        for t in range(1, len(turns) + 1):
            answers, pred_error = [], None
            for k in range(1, t + 1):
                req = by_turn.get((row["row_id"], k))
                pred = preds.get(req["key"]) if req else None
                if pred is None or pred.get("error") or pred.get("prediction") is None:
                    why = (pred or {}).get("error") or "no prediction"
                    pred_error = f"model answer of turn {k} missing ({why})"
                    break
                answers.append(pred["prediction"])
            base = {"model": model, "dataset": dplan.name, "subject": row["subject"], "row_id": row["row_id"],
                    "turn": t, "endpoint": j.endpoint, "kind": j.mode, "max_tokens": j.max_tokens,
                    "temperature": j.temperature, "baseline": j.baseline if j.mode == "pairwise" else "",
                    "model_len": len(answers[-1]) if len(answers) == t else 0, "baseline_len": 0}
            if j.mode == "single":
                parser = "alignbench" if loader == "alignbench" else "rating"
                req = {**base, "order": "", "parser": parser, "messages": "[]", "pre_error": pred_error}
                if pred_error is None:
                    if loader == "alignbench":
                        msgs = jp.alignbench_single(row["question"], answers[0], refs[0] if refs else "",
                                                    row["subject"], row.get("subcategory", ""))
                    else:
                        use_ref = row["subject"] in j.reference_categories and len(refs) >= t
                        msgs = jp.mt_bench_single(mt_prompts, turns, answers, refs[:t] if use_ref else [])
                    req["messages"] = json.dumps(msgs, ensure_ascii=False)
                out.append(_finish(req, endpoint, j))
                continue
            # pairwise: the model against the baseline (or the reference answers)
            base_answers = (baseline or {}).get(row["row_id"]) if j.baseline_path else refs
            if pred_error is None and (not base_answers or len(base_answers) < t):
                pred_error = (f"no {j.baseline} answer for turn {t}" if j.baseline_path
                              else f"no reference answer for turn {t}")
            if pred_error is None:
                base["baseline_len"] = len(base_answers[t - 1])
            parser = "alpaca" if loader == "alpacaeval" else "pair"
            for order in (("AB", "BA") if j.both_orders else ("AB",)):
                req = {**base, "order": order, "parser": parser, "messages": "[]", "pre_error": pred_error}
                if pred_error is None:
                    first, second = (answers, base_answers[:t]) if order == "AB" else (base_answers[:t], answers)
                    if loader == "alpacaeval":
                        msgs = jp.alpaca_pair(row["question"], first[0], second[0])
                    else:
                        use_ref = j.baseline_path is not None and row["subject"] in j.reference_categories and len(refs) >= t
                        msgs = jp.mt_bench_pair(mt_prompts, turns, first, second, refs[:t] if use_ref else [])
                    req["messages"] = json.dumps(msgs, ensure_ascii=False)
                out.append(_finish(req, endpoint, j))
    return out


def _finish(req: dict, endpoint: dict, j) -> dict:
    req["guided"] = list(parse.GUIDED_CHOICES.get(req["parser"], [])) if j.guided else []
    req["key"] = judge_key(endpoint, req)
    return req


# ---- verdicts ----------------------------------------------------------------
def interpret(parser: str, order: str, text: str) -> dict:
    """score / verdict / outcome (the model's: 1 win, 0.5 tie, 0 loss) / ratings, or error."""
    out = {"score": None, "verdict": None, "outcome": None, "ratings": None, "error": None}
    if parser == "rating":
        score = parse.parse_rating(text)
        if score is None:
            out["error"] = "unparseable verdict: no [[rating]] in 1-10"
        out["score"], out["verdict"] = score, None if score is None else f"{score:g}"
    elif parser == "alignbench":
        got = parse.parse_alignbench(text)
        if got is None:
            out["error"] = "unparseable verdict: no score dict with 综合得分 in 1-10"
        else:
            out["score"], out["verdict"] = got[0], f"{got[0]:g}"
            out["ratings"] = json.dumps(got[1], ensure_ascii=False)
    elif parser in ("pair", "alpaca"):
        v = parse.parse_pair(text) if parser == "pair" else parse.parse_alpaca(text)
        if v is None:
            out["error"] = "unparseable verdict: " + ("no [[A]]/[[B]]/[[C]]" if parser == "pair" else "no m/M")
            return out
        first = v in ("A", "m")
        out["verdict"] = v
        out["outcome"] = 0.5 if v == "tie" else float(first == (order == "AB"))
    else:
        out["error"] = f"unknown parser {parser!r}"
    return out
