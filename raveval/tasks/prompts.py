"""Prompt building: templates, fixed k-shot examples, plain and chat formats.

Each dataset row becomes one request row. Like OpenCompass's PPL and Gen
inferencers there are two modes: `ll` scores each choice as a continuation of
the prompt; `gen` lets the model answer and extracts the answer afterwards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from raveval.tasks.benchmarks.categories import CEVAL_CHINESE_NAMES

from raveval.config.schema import DatasetConfig

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Family:
    header: str
    template: str
    shot_answer: str
    # Display names of subjects for {subject_name}; others read "high school physics".
    subject_names: dict = field(default_factory=dict)


CHOICE_QA = Family(
    header="The following are multiple choice questions (with answers) about {subject_name}.\n\n",
    template="{question}\n{choices}\nAnswer:",
    shot_answer=" {gold}",
)
# C-Eval's own prompt (as in OpenCompass's ceval configs), in Chinese.
CEVAL = Family(
    header="以下是中国关于{subject_name}考试的单项选择题，请选出其中的正确答案。\n\n",
    template="{question}\n{choices}\n答案:",
    shot_answer=" {gold}",
    subject_names=CEVAL_CHINESE_NAMES,
)
MATH_QA = Family(header="", template="Question: {question}\nAnswer:", shot_answer=" {explanation}\n#### {gold}")
OPEN_QA = Family(header="", template="Question: {question}\nAnswer:", shot_answer=" {gold}")

# Subjective benchmarks: the question as it is (a chat turn); the judge scores the reply.
OPEN_CHAT = Family(header="", template="{question}", shot_answer="")

FAMILIES = {"mmlu": CHOICE_QA, "ceval": CEVAL, "gsm8k": MATH_QA,
            "mt_bench": OPEN_CHAT, "alignbench": OPEN_CHAT, "alpacaeval": OPEN_CHAT}


class PromptError(ValueError):
    pass


def family_of(cfg: DatasetConfig) -> Family:
    if cfg.loader in FAMILIES:
        return FAMILIES[cfg.loader]
    return CHOICE_QA if cfg.mode == "ll" or cfg.answer == "choice" else OPEN_QA


def _fields(row: dict, names: dict[str, str]) -> dict:
    choices = list(row.get("choices") or [])
    subject = row.get("subject") or ""
    fields = {
        **{k: v for k, v in row.items() if isinstance(v, str)},
        "subject": subject,
        "subject_name": names.get(subject) or subject.replace("_", " ") or "general knowledge",
        "choices": "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)),
        "explanation": row.get("explanation") or "",
    }
    fields.update({LETTERS[i]: c for i, c in enumerate(choices)})
    return fields


def _fill(template: str, row: dict, names: dict) -> str:
    try:
        return template.format(**_fields(row, names))
    except (KeyError, IndexError) as e:
        raise PromptError(f"template {template!r} uses {e} which row {row.get('row_id')!r} lacks") from None


def continuations(row: dict, chat: bool) -> list[str]:
    """The choice letters the `ll` mode scores; a space before each in plain text."""
    sep = "" if chat else " "
    return [sep + LETTERS[i] for i in range(len(row.get("choices") or []))]


def build_prompt(cfg: DatasetConfig, row: dict, shots: list[dict]) -> str | list[dict]:
    """The prompt of one row: a string (plain) or a list of chat messages."""
    fam = family_of(cfg)
    p = cfg.prompt
    template = p.template or fam.template
    header = fam.header if p.header is None else p.header
    shot_answer = p.shot_answer or fam.shot_answer
    fill = lambda t, r: _fill(t, r, fam.subject_names)  # noqa: E731
    question = fill(template, row)
    header = fill(header, row) if header else ""
    shot_pairs = [(fill(template, s), fill(shot_answer, s)) for s in shots]
    if p.format == "plain":
        text = header + "".join(q + a + "\n\n" for q, a in shot_pairs) + question
        return (p.system + "\n\n" + text) if p.system else text
    # Chat: shots as earlier rounds (as OpenCompass does), header in the first user turn.
    messages = [{"role": "system", "content": p.system}] if p.system else []
    turns = shot_pairs + [(question, None)]
    for i, (q, a) in enumerate(turns):
        messages.append({"role": "user", "content": (header if i == 0 else "") + q})
        if a is not None:
            messages.append({"role": "assistant", "content": a.strip()})
    return messages


def pick_shots(cfg: DatasetConfig, fewshot: dict[str, list[dict]], row: dict) -> list[dict]:
    """Fixed k-shot: the first k examples of the row's subject (OpenCompass FixKRetriever)."""
    k = cfg.prompt.k_shot
    if k == 0:
        return []
    pool = fewshot.get(row.get("subject") or "", fewshot.get("", []))
    return pool[:k]


def check(cfg: DatasetConfig) -> None:
    """Config-time checks that need no data."""
    if cfg.prompt.k_shot and not cfg.fewshot_path:
        raise PromptError(f"prompt.k_shot={cfg.prompt.k_shot} needs fewshot_path (the dev/train split)")


def encode_prompt(prompt: str | list[dict]) -> tuple[str, bool]:
    """Arrow-friendly form: (text, is_chat); chat messages as JSON."""
    if isinstance(prompt, str):
        return prompt, False
    return json.dumps(prompt, ensure_ascii=False), True


def decode_prompt(text: str, chat: bool) -> str | list[dict]:
    return json.loads(text) if chat else text
