"""Verdict parsers. Each returns None when the text holds no verdict; the caller
keeps the raw text either way and turns None into an error row that says so.

- rating: MT-Bench single grading, "Rating: [[7]]" (1-10); fallbacks "[7]",
  "Rating: 7", "7/10".
- pair: MT-Bench pairwise, "[[A]]" / "[[B]]" / "[[C]]" (tie); the last verdict
  wins (judges explain first and conclude last); fallbacks "[A]", "tie".
- alignbench: the score dict at the end, {'事实正确性': 9, ..., '综合得分': 7},
  in Python or JSON quoting; per-dimension scores plus the 1-10 overall.
- alpaca: AlpacaEval's output identifier, "m" or "M".
"""
from __future__ import annotations

import re
from typing import Optional

_NUM = r"(\d+(?:\.\d+)?)"
OVERALL_KEYS = ("综合得分", "overall", "overall score", "overall_score", "总分")


def _in_range(x: float, lo: float = 1.0, hi: float = 10.0) -> Optional[float]:
    return x if lo <= x <= hi else None


def parse_rating(text: str) -> Optional[float]:
    if not text:
        return None
    for pattern in (rf"\[\[\s*{_NUM}\s*(?:/\s*10\s*)?\]\]", rf"\[\s*{_NUM}\s*(?:/\s*10\s*)?\]",
                    rf"[Rr]ating\s*(?:is|of|:|：)?\s*\**\s*{_NUM}", rf"{_NUM}\s*/\s*10\b",
                    rf"[Ss]core\s*(?:is|of|:|：)?\s*\**\s*{_NUM}"):
        found = re.findall(pattern, text)
        if found:
            return _in_range(float(found[-1]))
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


def parse_alignbench(text: str) -> Optional[tuple[float, dict[str, float]]]:
    """(overall 1-10, {dimension: score}) from the last {...} of the text."""
    if not text:
        return None
    blocks = re.findall(r"\{([^{}]*)\}", text)
    for block in reversed(blocks):
        pairs = re.findall(rf"[\"'“‘]?([^\"'“”‘’,:：{{}}]+?)[\"'”’]?\s*[:：]\s*{_NUM}", block)
        ratings = {k.strip(): float(v) for k, v in pairs}
        if not ratings:
            continue
        overall = next((ratings[k] for k in ratings if k.lower() in OVERALL_KEYS), None)
        if overall is None:
            continue
        if _in_range(overall) is None or any(not 0 <= v <= 10 for v in ratings.values()):
            return None
        return overall, ratings
    m = re.findall(rf"(?:综合得分|[Oo]verall [Ss]core)[\"'”’]?\s*[:：]\s*{_NUM}", text)
    if m:
        overall = _in_range(float(m[-1]))
        return (overall, {"综合得分": overall}) if overall is not None else None
    return None


def parse_alpaca(text: str) -> Optional[str]:
    """'m' or 'M' (the identifiers of the two outputs)."""
    if not text:
        return None
    t = text.strip().strip("`\"'().[] \n")
    if t in ("m", "M"):
        return t
    found = re.findall(r"(?<![A-Za-z])(m|M)(?![A-Za-z])", text)
    return found[-1] if found else None


# Output constraints for guided decoding: the exact strings a verdict may be.
GUIDED_CHOICES = {
    "rating": [f"[[{i}]]" for i in range(1, 11)],
    "pair": ["[[A]]", "[[B]]", "[[C]]"],
    "alpaca": ["m", "M"],
}
