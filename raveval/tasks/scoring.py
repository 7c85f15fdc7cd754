"""Per-row scoring (answer extraction, choice accuracy) and aggregation.

Aggregates follow the benchmarks: `accuracy` over all scored rows; per
subject `accuracy/<subject>`; per group (MMLU's 4 categories, C-Eval's 4 and
"hard") `accuracy/<group>` as the unweighted mean of its subjects, and
`accuracy_macro` over all subjects, as OpenCompass and C-Eval report them.
Judged (subjective) datasets: `aggregate_subjective` (mean scores, win / tie /
loss rates, AlpacaEval's length-controlled win rate).
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict

from raveval.tasks.benchmarks.common import LETTERS
from raveval.tasks.length_control import length_controlled

_NUMBER = r"-?[\d,]*\.?\d+"


def extract_choice(text: str, n_choices: int) -> str:
    """The choice letter a generation picks, or "" when it names none."""
    valid = LETTERS[:n_choices] or "ABCD"
    cls = f"[{valid}]"
    patterns = [
        rf"(?:answer|Answer|ANSWER)\s*(?:is|:|：)?\s*[\(\[]?({cls})\b",
        rf"答案\s*(?:是|为|:|：)?\s*[\(\[]?({cls})",
        rf"^\s*[\(\[]?({cls})(?:[\)\]\.:：,，\s]|$)",
        rf"(?<![A-Za-z])({cls})(?![A-Za-z])",
    ]
    for p in patterns:
        m = re.search(p, text, flags=re.MULTILINE)
        if m:
            return m.group(1)
    return ""


def _clean_number(s: str) -> str:
    s = s.replace(",", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v.is_integer() else repr(v)


def extract_number(text: str) -> str:
    """GSM8K style: the number after `####`, else after "the answer is", else the last number."""
    for p in (rf"####\s*\$?({_NUMBER})", rf"[Tt]he answer is\s*\$?({_NUMBER})"):
        m = re.search(p, text)
        if m:
            return _clean_number(m.group(1))
    nums = re.findall(_NUMBER, text)
    return _clean_number(nums[-1]) if nums else ""


def normalize_text(s: str) -> str:
    return " ".join(s.strip().lower().split())


def extract(text: str, answer: str, n_choices: int) -> str:
    if answer == "choice":
        return extract_choice(text, n_choices)
    if answer == "number":
        return extract_number(text)
    return normalize_text(text)


def gold_of(gold: str, answer: str) -> str:
    if answer == "number":
        return _clean_number(gold.strip())
    if answer == "text":
        return normalize_text(gold)
    return gold.strip().upper()


def score_row(mode: str, answer: str, gold: str, n_choices: int, text: str | None, logprobs) -> tuple[str, bool | None]:
    """(extracted answer, correct) for one finished row; correct is None for a row
    without a gold answer (an unlabeled split, such as C-Eval's test)."""
    if mode == "ll":
        scores = list(logprobs)
        pred = LETTERS[max(range(len(scores)), key=scores.__getitem__)] if scores else ""
    else:
        pred = extract(text or "", answer, n_choices)
    if not gold:
        return pred, None
    if mode == "ll":
        return pred, pred == gold_of(gold, "choice")
    return pred, pred != "" and pred == gold_of(gold, answer)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else math.nan


def aggregate(rows: list[dict], groups: dict[str, list[str]]) -> list[dict]:
    """Metrics of one dataset from its rows (dicts with subject, correct, error).

    Returns [{"metric", "level", "value", "n", "errors"}] (level: dataset, group or subject): n counts scored rows,
    errors counts rows that ended with an error instead of a score.
    """
    by_subject: dict[str, list[bool]] = defaultdict(list)
    errors_by_subject: dict[str, int] = defaultdict(int)
    unlabeled = 0
    for r in rows:
        if r.get("error"):
            errors_by_subject[r["subject"]] += 1
        elif r["correct"] is None:
            unlabeled += 1
        else:
            by_subject[r["subject"]].append(bool(r["correct"]))
    errors = sum(errors_by_subject.values())
    if unlabeled and not any(by_subject.values()):
        # No gold answers (C-Eval's test split): no accuracy, only how many rows were answered.
        return [{"metric": "answered", "level": "dataset", "value": unlabeled / (unlabeled + errors),
                 "n": unlabeled, "errors": errors}]
    scored = [c for cs in by_subject.values() for c in cs]
    out = [{"metric": "accuracy", "level": "dataset", "value": _mean(scored), "n": len(scored),
            "errors": sum(errors_by_subject.values())}]
    subjects = sorted(set(by_subject) | set(errors_by_subject))
    if subjects == [""]:
        return out
    acc = {s: _mean(by_subject[s]) for s in subjects}
    n_err = lambda ss: sum(errors_by_subject[s] for s in ss)  # noqa: E731
    n_ok = lambda ss: sum(len(by_subject[s]) for s in ss)  # noqa: E731
    scored_subjects = [s for s in subjects if by_subject[s]]
    out.append({"metric": "accuracy_macro", "level": "dataset", "value": _mean(acc[s] for s in scored_subjects),
                "n": len(scored), "errors": n_err(subjects)})
    for g, members in sorted(groups.items()):
        present = [s for s in members if s in acc]
        if present:
            out.append({"metric": f"accuracy/{g}", "level": "group", "value": _mean(acc[s] for s in present if by_subject[s]),
                        "n": n_ok(present), "errors": n_err(present)})
    for s in subjects:
        out.append({"metric": f"accuracy/{s}", "level": "subject", "value": acc[s], "n": len(by_subject[s]), "errors": errors_by_subject[s]})
    return out


# ---- subjective (LLM-judged) datasets ----------------------------------------
def _units(rows: list[dict], mode: str) -> list[dict]:
    """One unit per (row, turn): single grading as is; pairwise orders combined
    (the mean of the model's outcomes; an error in either order fails the unit)."""
    if mode == "single":
        return rows
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["row_id"], r.get("turn") or 1)].append(r)
    units = []
    for group in by.values():
        err = next((r["error"] for r in group if r.get("error")), None)
        outcomes = [r.get("outcome") for r in group]
        if err is None and any(o is None for o in outcomes):
            err = "no verdict"
        first = group[0]
        units.append({**first, "error": err,
                      "outcome": None if err else sum(outcomes) / len(outcomes)})
    return units


def aggregate_subjective(rows: list[dict], mode: str, groups: dict[str, list[str]] | None = None,
                         instruction_index: bool = False) -> list[dict]:
    """Metrics of one judged dataset from its judgement rows (subject, row_id,
    turn, score / outcome, ratings, model_len, baseline_len, error).

    single: `score` (mean 1-10 rating) overall, per turn (`score/turn2`), per
    category (`score/<category>`), per group (mean of its categories) with
    `score_macro` over categories, and per dimension (`dim/<name>`, AlignBench).
    pairwise (both orders combined per row and turn): `win_rate`, `tie_rate`,
    `loss_rate`, `win_rate_adjusted` (ties count half), `lc_win_rate`
    (length-controlled; its `note` says how it was computed), and the win
    rate per turn and per category. `instruction_index`: the row ids are the
    instructions' indices in AlpacaEval's set (alpaca_eval's own LC GLM is tried).
    """
    units = _units(rows, mode)
    ok = [u for u in units if not u.get("error")]
    n_err = len(units) - len(ok)
    out: list[dict] = []

    def add(metric, level, vals, errors):
        vals = list(vals)
        out.append({"metric": metric, "level": level, "value": _mean(vals), "n": len(vals), "errors": errors})

    turns = sorted({u.get("turn") or 1 for u in units})
    subjects = sorted({u["subject"] for u in units})
    if mode == "single":
        add("score", "dataset", (u["score"] for u in ok), n_err)
        by_subject = {s: [u["score"] for u in ok if u["subject"] == s] for s in subjects}
        err_subject = {s: sum(1 for u in units if u["subject"] == s and u.get("error")) for s in subjects}
        if subjects != [""]:
            means = {s: _mean(v) for s, v in by_subject.items() if v}
            add("score_macro", "dataset", means.values(), n_err)
            out[-1]["n"] = len(ok)
            for g, members in sorted((groups or {}).items()):
                present = [s for s in members if s in means]
                if present:
                    add(f"score/{g}", "group", (means[s] for s in present), sum(err_subject[s] for s in present))
                    out[-1]["n"] = sum(len(by_subject[s]) for s in present)
        if len(turns) > 1:
            for t in turns:
                add(f"score/turn{t}", "turn", (u["score"] for u in ok if (u.get("turn") or 1) == t),
                    sum(1 for u in units if (u.get("turn") or 1) == t and u.get("error")))
        dims: dict[str, list[float]] = defaultdict(list)
        for u in ok:
            for k, v in (json.loads(u["ratings"]) if u.get("ratings") else {}).items():
                dims[k].append(v)
        for k in sorted(dims):
            add(f"dim/{k}", "dimension", dims[k], 0)
        if subjects != [""]:
            for s in subjects:
                add(f"score/{s}", "subject", by_subject[s], err_subject[s])
        return out

    outcomes = [u["outcome"] for u in ok]
    add("win_rate", "dataset", (float(o > 0.5) for o in outcomes), n_err)
    add("tie_rate", "dataset", (float(o == 0.5) for o in outcomes), n_err)
    add("loss_rate", "dataset", (float(o < 0.5) for o in outcomes), n_err)
    add("win_rate_adjusted", "dataset", outcomes, n_err)
    indices = [u["row_id"] for u in ok] if instruction_index and all(str(u["row_id"]).isdigit() for u in ok) else None
    lc, note = length_controlled(outcomes, [u["model_len"] for u in ok], [u["baseline_len"] for u in ok], indices)
    out.append({"metric": "lc_win_rate", "level": "dataset", "value": lc, "n": len(ok), "errors": n_err,
                "note": note or None})
    if len(turns) > 1:
        for t in turns:
            add(f"win_rate/turn{t}", "turn", (float(u["outcome"] > 0.5) for u in ok if (u.get("turn") or 1) == t),
                sum(1 for u in units if (u.get("turn") or 1) == t and u.get("error")))
    if subjects != [""]:
        for s in subjects:
            add(f"win_rate/{s}", "subject", (float(u["outcome"] > 0.5) for u in ok if u["subject"] == s),
                sum(1 for u in units if u["subject"] == s and u.get("error")))
    return out


def is_score_metric(metric: str) -> bool:
    """Judge ratings (1-10) rather than rates (0-1)."""
    return metric.startswith(("score", "dim/"))
