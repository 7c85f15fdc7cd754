"""Prompt templates, k-shot examples, plain and chat formats."""
from __future__ import annotations

import pytest

from raveval.tasks import prompts
from raveval.tasks.request import decode_prompt, encode_prompt
from raveval.config.schema import DatasetConfig

ROW = {"subject": "high_school_physics", "row_id": "high_school_physics/3", "question": "What is 2+2?",
       "choices": ["3", "4", "5", "6"], "gold": "B", "explanation": ""}
SHOT = {"subject": "high_school_physics", "row_id": "d/0", "question": "What is 1+1?",
        "choices": ["2", "3", "4", "5"], "gold": "A", "explanation": ""}


def cfg(**kw):
    base = dict(loader="mmlu", path="x", fewshot_path="y", mode="ll")
    return DatasetConfig.model_validate({**base, **kw})


def test_plain_mmlu_zero_shot():
    p = prompts.build_prompt(cfg(), ROW, [])
    assert p == ("The following are multiple choice questions (with answers) about high school physics.\n\n"
                 "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert prompts.continuations(ROW, chat=False) == [" A", " B", " C", " D"]


def test_plain_k_shot_puts_answered_examples_first():
    p = prompts.build_prompt(cfg(prompt={"k_shot": 1}), ROW, [SHOT])
    assert "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\nWhat is 2+2?" in p
    assert p.endswith("Answer:")


def test_chat_k_shot_is_earlier_rounds():
    msgs = prompts.build_prompt(cfg(prompt={"format": "chat", "k_shot": 1, "system": "Be brief."}), ROW, [SHOT])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"].startswith("The following are") and msgs[2]["content"] == "A"
    assert msgs[3]["content"].endswith("D. 6\nAnswer:")
    assert prompts.continuations(ROW, chat=True) == ["A", "B", "C", "D"]
    text, chat = encode_prompt(msgs)
    assert chat and decode_prompt(text, chat) == msgs


def test_gsm8k_shots_show_reasoning_then_answer():
    row = {"subject": "", "row_id": "1", "question": "Q2?", "choices": [], "gold": "7", "explanation": ""}
    shot = {"subject": "", "row_id": "0", "question": "Q1?", "choices": [], "gold": "5", "explanation": "2+3=5"}
    p = prompts.build_prompt(cfg(loader="gsm8k", mode="gen", answer="number", prompt={"k_shot": 1}), row, [shot])
    assert p == "Question: Q1?\nAnswer: 2+3=5\n#### 5\n\nQuestion: Q2?\nAnswer:"


def test_ceval_uses_its_chinese_prompt():
    p = prompts.build_prompt(cfg(loader="ceval"), ROW, [])
    assert p.startswith("以下是中国关于高中物理考试的单项选择题") and p.endswith("答案:")


def test_custom_template_and_missing_field_error():
    p = prompts.build_prompt(cfg(prompt={"template": "Q: {question} ({subject})", "header": ""}), ROW, [])
    assert p == "Q: What is 2+2? (high_school_physics)"
    with pytest.raises(prompts.PromptError, match="nosuch"):
        prompts.build_prompt(cfg(prompt={"template": "{nosuch}"}), ROW, [])


def test_fixed_k_shot_takes_first_k_of_the_subject():
    pool = {"high_school_physics": [SHOT, {**SHOT, "row_id": "d/1"}, {**SHOT, "row_id": "d/2"}], "": []}
    got = prompts.pick_shots(cfg(prompt={"k_shot": 2}), pool, ROW)
    assert [s["row_id"] for s in got] == ["d/0", "d/1"]
    assert prompts.pick_shots(cfg(), pool, ROW) == []


def test_k_shot_without_fewshot_path_is_a_config_error():
    with pytest.raises(prompts.PromptError, match="fewshot_path"):
        prompts.check(cfg(fewshot_path=None, prompt={"k_shot": 5}))


def test_generated_answers_are_read_as_the_benchmarks_gold_kind():
    prompts.check(cfg(loader="gsm8k", mode="gen", answer="number"))
    with pytest.raises(prompts.PromptError, match="answer: choice cannot match gsm8k's gold answers; use answer: number"):
        prompts.check(cfg(loader="gsm8k", mode="gen"))
    prompts.check(cfg(loader="generic", mode="gen", answer="text"))  # generic: any kind


def test_generic_family_follows_mode_and_answer():
    row = {**ROW, "subject": ""}
    mc = prompts.build_prompt(cfg(loader="generic", mode="gen", answer="choice"), row, [])
    assert mc.startswith("The following are multiple choice questions (with answers) about general knowledge.")
    assert prompts.build_prompt(cfg(loader="generic", mode="gen", answer="number"), row, []) == \
        "Question: What is 2+2?\nAnswer:"
