"""Prompt building: templates, fixed k-shot examples, plain and chat formats.

Each dataset row becomes one request row. Like OpenCompass's PPL and Gen
inferencers there are two modes: `ll` scores each choice as a continuation of
the prompt; `gen` lets the model answer and extracts the answer afterwards.
The default template, header and shot answer come from the benchmark's
prompt family (its spec in tasks/benchmarks); `prompt:` overrides each.
"""
from __future__ import annotations

from string import Formatter

from raveval.config.schema import DatasetConfig
from raveval.tasks.benchmarks import benchmark
from raveval.tasks.benchmarks.common import LETTERS


class PromptError(ValueError):
    pass


class _Fields:
    """The fields a template can name for one row: its text columns, the choices
    block, the subject's name, each choice by letter. Each is made only when the
    template asks for it (a run builds hundreds of thousands of prompts)."""

    def __init__(self, row: dict, names: dict[str, str]):
        self.row, self.names = row, names

    def __getitem__(self, key: str) -> str:
        row = self.row
        choices = row.get("choices") or []
        if key == "choices":
            return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        if key == "subject":
            return row.get("subject") or ""
        if key == "subject_name":
            subject = row.get("subject") or ""
            return self.names.get(subject) or subject.replace("_", " ") or "general knowledge"
        if key == "explanation":
            return row.get("explanation") or ""
        if len(key) == 1 and key in LETTERS[:len(choices)]:
            return choices[LETTERS.index(key)]
        value = row.get(key)
        if isinstance(value, str):
            return value
        raise KeyError(key)


def _fill(template: str, row: dict, names: dict) -> str:
    try:
        return template.format_map(_Fields(row, names))
    except (KeyError, IndexError) as e:
        raise PromptError(f"template {template!r} uses {e} which row {row.get('row_id')!r} lacks") from None


def continuations(row: dict, chat: bool) -> list[str]:
    """The choice letters the `ll` mode scores; a space before each in plain text."""
    sep = "" if chat else " "
    return [sep + LETTERS[i] for i in range(len(row.get("choices") or []))]


class PromptBuilder:
    """The prompts of one dataset: `builder(row, shots)` is a string (plain) or a
    list of chat messages. The filled shots are kept: every row of a subject has the same."""

    def __init__(self, cfg: DatasetConfig):
        fam = benchmark(cfg.loader).family_of(cfg)
        self.p, self.names = cfg.prompt, fam.subject_names
        self.template = self.p.template or fam.template
        self.header = fam.header if self.p.header is None else self.p.header
        self.shot_answer = self.p.shot_answer or fam.shot_answer
        self._shots: dict[tuple[int, ...], list[tuple[str, str]]] = {}
        # A header that names only the subject is the same for every row of a subject: made once per subject.
        named = {f for _, f, _, _ in Formatter().parse(self.header or "") if f is not None}
        self._headers: dict[str, str] | None = {} if named <= {"subject", "subject_name"} else None

    def _shot_pairs(self, shots: list[dict]) -> list[tuple[str, str]]:
        key = tuple(id(s) for s in shots)  # the same rows of the few-shot file
        if key not in self._shots:
            self._shots[key] = [(_fill(self.template, s, self.names), _fill(self.shot_answer, s, self.names))
                                for s in shots]
        return self._shots[key]

    def _header(self, row: dict) -> str:
        if self._headers is None:
            return _fill(self.header, row, self.names)
        subject = row.get("subject") or ""
        if subject not in self._headers:
            self._headers[subject] = _fill(self.header, row, self.names)
        return self._headers[subject]

    def __call__(self, row: dict, shots: list[dict]) -> str | list[dict]:
        p = self.p
        question = _fill(self.template, row, self.names)
        header = self._header(row) if self.header else ""
        shot_pairs = self._shot_pairs(shots)
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


def build_prompt(cfg: DatasetConfig, row: dict, shots: list[dict]) -> str | list[dict]:
    """The prompt of one row (a builder for one row: datasets use PromptBuilder)."""
    return PromptBuilder(cfg)(row, shots)


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
    kind = benchmark(cfg.loader).answer
    # A generation read as another kind than the gold answers could never be right.
    if cfg.mode == "gen" and cfg.judge is None and kind and cfg.answer != kind:
        raise PromptError(f"answer: {cfg.answer} cannot match {cfg.loader}'s gold answers; use answer: {kind}")
