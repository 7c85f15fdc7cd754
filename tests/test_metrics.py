"""Answer extraction, row scoring and aggregation."""
from __future__ import annotations

import math

import pytest

from raveval.tasks.scoring import aggregate, extract_choice, extract_number, score_row


@pytest.mark.parametrize("text, want", [
    (" B", "B"), ("B. Paris", "B"), ("(C) because", "C"), ("The answer is D.", "D"),
    ("Answer: A", "A"), ("答案是C", "C"), ("I think it is B", "B"), ("nothing here", ""),
    ("E", ""),  # not one of the four choices
])
def test_extract_choice(text, want):
    assert extract_choice(text, 4) == want


@pytest.mark.parametrize("text, want", [
    ("She pays 3*4=12 dollars.\n#### 1,234", "1234"), ("so the answer is 18.", "18"),
    ("first 3 then 5 then 42", "42"), ("#### -7", "-7"), ("#### 2.50", "2.5"), ("#### 18.0", "18"), ("no digits", ""),
])
def test_extract_number(text, want):
    assert extract_number(text) == want


def test_score_row_modes():
    assert score_row("ll", "choice", "C", 4, None, [-3.0, -2.0, -0.5, -4.0]) == ("C", True)
    assert score_row("ll", "choice", "A", 4, None, [-3.0, -2.0, -0.5, -4.0]) == ("C", False)
    assert score_row("gen", "number", "1,000", 0, "so #### 1000", None) == ("1000", True)
    assert score_row("gen", "choice", "b", 4, "B", None) == ("B", True)
    assert score_row("gen", "number", "5", 0, "no idea", None) == ("", False)


def test_aggregate_subjects_groups_and_errors():
    rows = ([{"subject": "a", "correct": True, "error": None}] * 3 + [{"subject": "a", "correct": False, "error": None}]
            + [{"subject": "b", "correct": False, "error": None}, {"subject": "b", "correct": None, "error": "boom"}]
            + [{"subject": "c", "correct": True, "error": None}])
    got = {m["metric"]: m for m in aggregate(rows, {"g1": ["a", "b"], "g2": ["c", "z"], "g3": ["z"]})}
    assert got["accuracy"]["value"] == pytest.approx(4 / 6) and got["accuracy"]["n"] == 6 and got["accuracy"]["errors"] == 1
    assert got["accuracy_macro"]["value"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert got["accuracy/g1"]["value"] == pytest.approx((0.75 + 0) / 2) and got["accuracy/g1"]["errors"] == 1
    assert got["accuracy/g1"]["level"] == "group" and got["accuracy/a"]["level"] == "subject"
    assert got["accuracy/g2"]["value"] == 1.0 and "accuracy/g3" not in got
    assert got["accuracy/b"]["n"] == 1 and got["accuracy/b"]["errors"] == 1


def test_aggregate_without_subjects_and_all_errors():
    got = aggregate([{"subject": "", "correct": None, "error": "x"}], {})
    assert len(got) == 1 and got[0]["n"] == 0 and got[0]["errors"] == 1 and math.isnan(got[0]["value"])
