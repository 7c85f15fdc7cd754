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

What differs between benchmarks (the judge modes, their prompts and verdict
parsers, the baseline's answers) comes from the benchmark's spec; this module
only walks rows, turns and orders.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from raveval.tasks.benchmarks import BENCHMARKS, benchmark
from raveval.tasks.benchmarks.spec import JudgeSetupError  # what `check` raises (a benchmark's setup too)
from raveval.tasks.request import JudgeRequest, Request, replace, row_key

# Every verdict parser by the name judgement rows store (their `parser`).
VERDICTS = {m.verdict.name: m.verdict for b in BENCHMARKS for m in b.judge_modes.values()}


def check(name: str, d) -> None:
    """Config checks of a judged dataset that need no model output (run at plan time)."""
    j = d.judge
    if j is None:
        return
    spec = benchmark(d.loader)
    if not spec.judge_modes:
        judged = [b.name for b in BENCHMARKS if b.judge_modes]
        raise JudgeSetupError(f"judge: loader {d.loader!r} has no judge prompts (use one of {judged})")
    if j.mode not in spec.judge_modes:
        raise JudgeSetupError(f"judge.mode {j.mode!r} is not available for {d.loader} "
                              f"(have: {list(spec.judge_modes)})")
    if d.mode != "gen":
        raise JudgeSetupError("a judged dataset needs mode: gen")
    mode = spec.judge_modes[j.mode]
    mode.setup(d)
    if j.guided and not mode.verdict.guided:
        raise JudgeSetupError(f"judge.guided is not available for {d.loader} {j.mode} "
                              f"(its verdict, {mode.verdict.name!r}, is not one of a fixed set of strings)")
    if j.baseline_path:
        if not Path(j.baseline_path).is_file():
            raise JudgeSetupError(f"judge.baseline_path not found: {j.baseline_path}")
        if j.mode == "pairwise" and spec.baseline is None:
            raise JudgeSetupError(f"judge.baseline_path: {d.loader} cannot read another model's answers; "
                                  "use baseline: reference")


def prompts_used(d) -> str:
    """Which judge prompts a judged dataset config gets, in words: the benchmark's
    published files or our fallback wording (the dry run and the summary say it)."""
    spec = benchmark(d.loader)
    return spec.judge_modes[d.judge.mode].prompts(d)


def n_turns(row: dict) -> int:
    return len(row.get("turns") or [row["question"]])


# ---- multi-turn ------------------------------------------------------------
def followup_requests(dplan, turn: int, preds: dict[str, dict], model_id: dict) -> list[Request]:
    """Requests of `turn` (>= 2) for rows whose turn-1..turn-1 answers exist."""
    by_turn = {(r.row_id, r.turn): r for r in dplan.requests}
    out = []
    for row in dplan.rows:
        if n_turns(row) < turn or (row["row_id"], turn) in by_turn:
            continue
        prev = by_turn.get((row["row_id"], turn - 1))
        pred = preds.get(prev.key) if prev else None
        if pred is None or pred.get("error") or pred.get("prediction") is None:
            continue  # no answer to build on: the judgement of this turn becomes an error row
        messages = json.loads(prev.prompt) + [
            {"role": "assistant", "content": pred["prediction"]},
            {"role": "user", "content": row["turns"][turn - 1]},
        ]
        text = json.dumps(messages, ensure_ascii=False)
        out.append(replace(prev, turn=turn, prompt=text,
                           key=row_key(model_id, dplan.name, row["row_id"], text, [], prev.params, prev.mode)))
    return out


# ---- judge requests ----------------------------------------------------------
def judge_requests(dplan, preds: dict[str, dict], endpoint: dict, model: str) -> list[JudgeRequest]:
    """All judgements of one dataset (see the module doc). `endpoint`: the EndpointConfig as a dict."""
    d, j = dplan.cfg, dplan.cfg.judge
    spec = benchmark(d.loader)
    mode = spec.judge_modes[j.mode]
    prompt = mode.setup(d)
    guided = list(mode.verdict.guided) if j.guided else []
    pairwise = j.mode == "pairwise"
    # Pairwise against another model: its answers; against "reference": each row's reference answers.
    baseline = spec.baseline(Path(j.baseline_path), dplan.rows) if pairwise and j.baseline_path else None
    by_turn = {(r.row_id, r.turn): r for r in dplan.requests}
    out = []
    for row in dplan.rows:
        refs = list(row.get("reference") or [])
        for t in range(1, n_turns(row) + 1):
            answers, pre_error = [], None
            for k in range(1, t + 1):
                req = by_turn.get((row["row_id"], k))
                pred = preds.get(req.key) if req else None
                if pred is None or pred.get("error") or pred.get("prediction") is None:
                    why = (pred or {}).get("error") or "no prediction"
                    pre_error = f"model answer of turn {k} missing ({why})"
                    break
                answers.append(pred["prediction"])
            fields = dict(model=model, dataset=dplan.name, subject=row["subject"], row_id=row["row_id"], turn=t,
                          endpoint=j.endpoint, kind=j.mode, parser=mode.verdict.name, max_tokens=j.max_tokens,
                          temperature=j.temperature, guided=guided, baseline=j.baseline if pairwise else "",
                          model_len=len(answers[-1]) if len(answers) == t else 0, baseline_len=0)
            if not pairwise:
                messages = prompt(row, answers) if pre_error is None else []
                out.append(_request(endpoint, fields, "", messages, pre_error))
                continue
            # pairwise: the model against the baseline (or the reference answers)
            other = (baseline or {}).get(row["row_id"]) if j.baseline_path else refs
            if pre_error is None and (not other or len(other) < t):
                pre_error = (f"no {j.baseline} answer for turn {t}" if j.baseline_path
                             else f"no reference answer for turn {t}")
            if pre_error is None:
                fields["baseline_len"] = len(other[t - 1])
            for order in (("AB", "BA") if j.both_orders else ("AB",)):
                messages = []
                if pre_error is None:
                    first, second = (answers, other[:t]) if order == "AB" else (other[:t], answers)
                    messages = prompt(row, first, second)
                out.append(_request(endpoint, fields, order, messages, pre_error))
    return out


def _request(endpoint: dict, fields: dict, order: str, messages: list[dict], pre_error) -> JudgeRequest:
    """The judgement row, keyed by everything that changes the judge's reply."""
    r = {**fields, "order": order, "messages": json.dumps(messages, ensure_ascii=False), "pre_error": pre_error}
    blob = json.dumps([endpoint.get("base_url"), endpoint.get("model"), r["model"], r["dataset"], r["row_id"],
                       r["turn"], r["order"], r["parser"], r["messages"], r["max_tokens"], r["temperature"],
                       r["guided"]], ensure_ascii=False, sort_keys=True)
    return JudgeRequest(key=hashlib.sha256(blob.encode()).hexdigest()[:32], **r)


# ---- verdicts ----------------------------------------------------------------
def interpret(parser: str, order: str, text: str) -> dict:
    """score / verdict / outcome (the model's: 1 win, 0.5 tie, 0 loss) / ratings, or error."""
    verdict = VERDICTS.get(parser)
    if verdict is None:
        return {"score": None, "verdict": None, "outcome": None, "ratings": None,
                "error": f"unknown parser {parser!r}"}
    return verdict.read(order, text)
