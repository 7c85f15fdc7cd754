"""Per-row scoring (answer extraction, choice accuracy) and aggregation.

Aggregates follow the benchmarks: `accuracy` over all scored rows; per
subject `accuracy/<subject>`; per group (MMLU's 4 categories, C-Eval's 4 and
"hard") `accuracy/<group>` as the unweighted mean of its subjects, and
`accuracy_macro` over all subjects, as OpenCompass and C-Eval report them.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

from raveval.prompts import LETTERS

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


def score_row(mode: str, answer: str, gold: str, n_choices: int, text: str | None, logprobs) -> tuple[str, bool]:
    """(extracted answer, correct) for one finished row."""
    if mode == "ll":
        scores = list(logprobs)
        pred = LETTERS[max(range(len(scores)), key=scores.__getitem__)] if scores else ""
        return pred, pred == gold_of(gold, "choice")
    pred = extract(text or "", answer, n_choices)
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
    for r in rows:
        if r.get("error"):
            errors_by_subject[r["subject"]] += 1
        else:
            by_subject[r["subject"]].append(bool(r["correct"]))
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
