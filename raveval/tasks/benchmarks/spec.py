"""What a benchmark is: one `Benchmark` per dataset family, defined in that
family's module and listed once in the registry (`benchmarks/__init__.py`).

A spec holds everything that differs between families, so the code that uses
it (prompts, judging, the run) never branches on a loader name: the loader,
the prompt family, the kind of gold answer, and, for benchmarks an LLM judge
scores, the judge modes (verdict parser and judge prompt of each) and the
reader of a pairwise baseline's answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from raveval.config.schema import DatasetConfig
from raveval.tasks.verdicts import Verdict

from .common import Parsed


class JudgeSetupError(ValueError):
    """A judged dataset's config cannot work (mode, prompt format, judge prompt file...)."""


@dataclass(frozen=True)
class Family:
    """The default prompt of a family; a dataset's `prompt:` config overrides each part."""
    header: str
    template: str
    shot_answer: str
    # Display names of subjects for {subject_name}; others read "high school physics".
    subject_names: Mapping[str, str] = field(default_factory=dict)


# Families more than one benchmark uses.
CHOICE_QA = Family(
    header="The following are multiple choice questions (with answers) about {subject_name}.\n\n",
    template="{question}\n{choices}\nAnswer:",
    shot_answer=" {gold}",
)
OPEN_QA = Family(header="", template="Question: {question}\nAnswer:", shot_answer=" {gold}")
# Subjective benchmarks: the question as it is (a chat turn); the judge scores the reply.
OPEN_CHAT = Family(header="", template="{question}", shot_answer="")

# The judge prompt of one judgement, as chat messages. Single grading:
# (row, the model's answers of turns 1..t); pairwise: (row, the answers
# shown first, the answers shown second), each of turns 1..t.
Prompter = Callable[..., list[dict]]


# What a judge prompt of our own wording is called where the benchmark's files are not given.
FALLBACK = "raveval fallback wording"


@dataclass(frozen=True)
class JudgeMode:
    verdict: Verdict
    # Checks the dataset config (JudgeSetupError) and loads what the judge
    # prompt needs; returns the prompter. Called at plan time too, so a bad
    # setup fails before any model call.
    setup: Callable[[DatasetConfig], Prompter]
    # Which judge prompts the config gets, in words (the dry run and the
    # summary name them): the benchmark's published files, or our fallback.
    prompts: Callable[[DatasetConfig], str] = lambda cfg: FALLBACK


@dataclass(frozen=True)
class Benchmark:
    name: str                                  # the `loader:` of a dataset config
    load: Callable[[DatasetConfig], Parsed]
    # The prompt family, or a function picking it from the config.
    family: Family | Callable[[DatasetConfig], Family]
    # What the gold answers are ("choice", "number"), which a gen-mode `answer:` must match; None: any.
    answer: Optional[str] = None
    # Judge mode ("single", "pairwise") -> how it is asked and read; empty: not judged.
    judge_modes: Mapping[str, JudgeMode] = field(default_factory=dict)
    # Pairwise against another model: (judge.baseline_path, the loaded rows) -> {row_id: its answers by turn}.
    baseline: Optional[Callable[[Path, list[dict]], dict[str, list[str]]]] = None
    # A split without labels (C-Eval test): the leaderboard's submission file from the
    # predictions (rows with subject, row_id, answer_pred) -> a JSON object.
    submission: Optional[Callable[[list[dict]], dict]] = None
    # Row ids are the indices of AlpacaEval's instructions: its own length-controlled
    # win rate GLM (per-instruction difficulty) applies where the package is installed.
    instruction_index: bool = False

    def family_of(self, cfg: DatasetConfig) -> Family:
        return self.family if isinstance(self.family, Family) else self.family(cfg)


def read_judge_file(p: Path, what: str) -> str:
    """The text of a judge prompt file a dataset config names (judge.prompts_path)."""
    if not p.is_file():
        raise JudgeSetupError(f"{what} not found: {p} (judge.prompts_path)")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JudgeSetupError(f"{p}: not UTF-8") from None


def chat(system: str, user: str) -> list[dict]:
    """A judge prompt: an optional system message, then the user message."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def no_config_path(cfg: DatasetConfig) -> None:
    """judge.config_path is AlignBench's; another benchmark refuses it rather than ignore it."""
    if cfg.judge.config_path:
        raise JudgeSetupError(f"judge.config_path is read by alignbench only, not {cfg.loader}")
