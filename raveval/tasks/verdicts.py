"""Verdicts: how a judge's reply is read. A benchmark names one `Verdict` per
judge mode; the verdict's name is stored in each judgement row (`parser`), so
the judge stage can read the reply without knowing the benchmark.

A parser returns None when the text holds no verdict; the judgement then
becomes an error row that says so, with the raw text kept either way.

FastChat's two formats live here because any benchmark may reuse them:
- rating: single grading, "Rating: [[7]]" (1-10); fallbacks "[7]",
  "Rating: 7", "7/10".
- pair: pairwise, "[[A]]" / "[[B]]" / "[[C]]" (tie); the last verdict wins
  (judges explain first and conclude last); fallbacks "[A]", "tie".
A benchmark with a format of its own defines its Verdict in its module.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Optional

NUM = r"(\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Verdict:
    name: str                 # stored as the judgement row's `parser` (part of its key)
    # Single grading: text -> (1-10 score, {dimension: score} or None);
    # pairwise: text -> the verdict string (`first`, the other answer's, or "tie").
    parse: Callable[[str], object]
    missing: str              # the error when the text holds no verdict
    first: str = ""           # pairwise: the verdict that prefers the answer shown first; "" for scores
    guided: tuple[str, ...] = ()  # every string the verdict may be, for guided decoding; (): not possible

    def read(self, order: str, text: str) -> dict:
        """score / verdict / outcome (the model's: 1 win, 0.5 tie, 0 loss) / ratings, or error.
        `order`: pairwise, "AB" when the model's answer was shown first, "BA" when second."""
        out = {"score": None, "verdict": None, "outcome": None, "ratings": None, "error": None}
        got = self.parse(text)
        if got is None:
            out["error"] = f"unparseable verdict: {self.missing}"
        elif not self.first:
            score, ratings = got
            out["score"], out["verdict"] = score, f"{score:g}"
            if ratings is not None:
                out["ratings"] = json.dumps(ratings, ensure_ascii=False)
        else:
            out["verdict"] = got
            out["outcome"] = 0.5 if got == "tie" else float((got == self.first) == (order == "AB"))
        return out


def in_range(x: float, lo: float = 1.0, hi: float = 10.0) -> Optional[float]:
    return x if lo <= x <= hi else None


def parse_rating(text: str) -> Optional[float]:
    if not text:
        return None
    for pattern in (rf"\[\[\s*{NUM}\s*(?:/\s*10\s*)?\]\]", rf"\[\s*{NUM}\s*(?:/\s*10\s*)?\]",
                    rf"[Rr]ating\s*(?:is|of|:|：)?\s*\**\s*{NUM}", rf"{NUM}\s*/\s*10\b",
                    rf"[Ss]core\s*(?:is|of|:|：)?\s*\**\s*{NUM}"):
        found = re.findall(pattern, text)
        if found:
            return in_range(float(found[-1]))
    return None


def parse_pair(text: str) -> Optional[str]:
    """'A', 'B' or 'tie'."""
    if not text:
        return None
    for pattern in (r"\[\[\s*([ABC])\s*\]\]", r"\[\s*([ABC])\s*\]"):
        found = re.findall(pattern, text)
        if found:
            v = found[-1]
            return "tie" if v == "C" else v
    t = text.strip()
    if re.fullmatch(r"[\(\"']?([AB])[\)\"'.]?", t):
        return t.strip("()\"'.")
    if re.search(r"\b(tie|equally good|equally bad)\b", t, re.IGNORECASE):
        return "tie"
    m = re.findall(r"[Aa]ssistant\s+([AB])\s+is\s+(?:better|superior)", t)
    return m[-1] if m else None


def _rating(text: str) -> Optional[tuple[float, None]]:
    score = parse_rating(text)
    return None if score is None else (score, None)


RATING = Verdict("rating", _rating, "no [[rating]] in 1-10", guided=tuple(f"[[{i}]]" for i in range(1, 11)))
PAIR = Verdict("pair", parse_pair, "no [[A]]/[[B]]/[[C]]", first="A", guided=("[[A]]", "[[B]]", "[[C]]"))
