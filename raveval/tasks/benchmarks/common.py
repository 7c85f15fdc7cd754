"""Shared pieces of the dataset loaders: the row shape, file readers that report
where a file is wrong, and the options every loader applies the same way
(subjects filter, per-subject limit / seeded sample, stable order)."""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

# Choice letters, everywhere: gold answers, prompts, ll continuations, extraction.
LETTERS = "ABCDEFGHIJ"


class DatasetError(ValueError):
    """A dataset file or option is wrong; the message names the file and the place."""


class RowError(DatasetError):
    """One record of a file is wrong (raised inside `row_at`): that row becomes an
    error row naming its file and line, and the other rows run."""


@dataclass(frozen=True)
class BadRow:
    """A record that could not be read as a row: evaluated as an error row."""
    row_id: str   # "<file name>:<line>", unique within the dataset
    subject: str  # "" where the file does not say
    error: str    # "<path>: line N: what is wrong"


class row_at:
    """`with row_at(bad, path, where):` the block builds one row from the record at
    `where` ("line 12") of `path`. A RowError inside it adds a BadRow to `bad`; with
    `bad` None (few-shot files, whose rows shape every prompt) it fails the dataset
    instead. (A class, not a generator: it runs once per row of every file.)"""

    def __init__(self, bad: list[BadRow] | None, path: Path, where: str, subject: str = ""):
        self.bad, self.path, self.where, self.subject = bad, path, where, subject

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, e, tb) -> bool:
        if kind is None or not issubclass(kind, RowError):
            return False
        if self.bad is None:
            raise DatasetError(f"{self.path}: {self.where}: {e}") from None
        self.bad.append(BadRow(f"{Path(self.path).name}:{self.where.split()[-1]}", self.subject,
                               f"{self.path}: {self.where}: {e}"))
        return True


@dataclass
class LoadedDataset:
    name: str
    rows: list[dict]
    fewshot: dict[str, list[dict]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    bad: list[BadRow] = field(default_factory=list)  # records that are not rows: error rows


class Parsed(NamedTuple):
    """What a loader returns before the common options are applied."""
    rows: list[dict]
    fewshot: dict[str, list[dict]]
    groups: dict[str, list[str]]
    bad: list[BadRow] = []


def make_row(subject: str, row_id: str, question: str, choices: list, gold: str) -> dict:
    return {"subject": subject, "row_id": row_id, "question": question,
            "choices": [str(c) for c in choices], "gold": gold}


def snake(name: str) -> str:
    """'High School  Physics' -> 'high_school_physics' (MMLU topics come spaced)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def existing(path: str | Path, what: str, want_file: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{what} not found: {p}")
    if want_file and not p.is_file():
        raise DatasetError(f"{what} is not a file: {p}")
    return p


def read_jsonl(path: Path, bad: list[BadRow] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object); blank lines are skipped. A line that is
    not UTF-8 or not a JSON object is a bad row (see `row_at`)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            ok = None
            with row_at(bad, path, f"line {lineno}"):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise RowError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                   f"save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RowError(f"invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise RowError("expected a JSON object")
                ok = obj
            if ok is not None:
                yield lineno, ok


def read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number where the record ends, cells). utf-8-sig: C-Eval files may carry a BOM."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            for cells in reader:
                if cells:
                    yield reader.line_num, cells
    except UnicodeDecodeError as e:  # a CSV record may span lines: the file, not a row, is wrong
        raise DatasetError(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start} of a "
                           f"read block); save the file as UTF-8") from None


def letter(value, n_choices: int, allow_empty: bool = False) -> str:
    """The gold letter of a record (raises RowError: use inside `row_at`)."""
    gold = str(value).strip().upper()
    if gold == "" and allow_empty:
        return ""
    if len(gold) != 1 or gold not in LETTERS[:n_choices]:
        raise RowError(f"bad answer letter {value!r} (expected one of {', '.join(LETTERS[:n_choices])})")
    return gold


def split_files(folder: Path, splits: tuple[str, ...], what: str) -> tuple[str, dict[str, Path]]:
    """Map subject -> file for a folder of `{subject}_{split}.csv`.

    `folder` may also be the parent holding a `{split}/` folder (MMLU's `data/`).
    Returns the split name read from the file names and the mapping.
    """
    if folder.is_file():
        files = [folder]
    else:
        files = sorted(folder.glob("*.csv"))
        if not files:
            for split in splits:
                if (folder / split).is_dir():
                    return split_files(folder / split, (split,), what)
    found: dict[str, dict[str, Path]] = {}
    for f in files:
        m = re.fullmatch(r"(.+)_([a-z]+)\.csv", f.name)
        if m and m.group(2) in splits:
            found.setdefault(m.group(2), {})[m.group(1)] = f
    if not found:
        raise DatasetError(f"{what}: no {{subject}}_{{{'|'.join(splits)}}}.csv files in {folder}")
    if len(found) > 1:
        raise DatasetError(f"{what}: {folder} mixes splits {sorted(found)}; point at one split")
    split, subjects = found.popitem()
    return split, subjects


def finalize(name: str, subjects: Optional[list[str]], limit: Optional[int],
             seed: Optional[int], parsed: Parsed) -> LoadedDataset:
    """Apply the options every loader shares and fix the output order."""
    rows = parsed.rows
    seen: set[str] = set()
    for r in rows:
        if r["row_id"] in seen:
            raise DatasetError(f"{name}: duplicate row_id {r['row_id']!r}")
        seen.add(r["row_id"])

    by_subject: dict[str, list[dict]] = {}
    for r in rows:  # rows arrive in file order; keep it within each subject
        by_subject.setdefault(r["subject"], []).append(r)

    if subjects is not None:
        unknown = [s for s in subjects if s not in by_subject]
        if unknown:
            raise DatasetError(f"{name}: unknown subject(s) {unknown}; valid: {sorted(by_subject)}")
        by_subject = {s: by_subject[s] for s in set(subjects)}

    out: list[dict] = []
    for subject in sorted(by_subject):
        part = by_subject[subject]
        if limit is not None and len(part) > limit:
            if seed is None:
                part = part[:limit]
            else:
                # Seeded per subject, so one subject's sample does not depend on
                # which other subjects are selected; file order is kept.
                picked = set(random.Random(f"{seed}/{subject}").sample(range(len(part)), limit))
                part = [r for i, r in enumerate(part) if i in picked]
        out.extend(part)

    kept = set(by_subject)
    fewshot = {s: v for s, v in sorted(parsed.fewshot.items()) if s in kept}
    # Groups only list subjects that are loaded, so aggregates never average missing members.
    groups = {g: [s for s in members if s in kept] for g, members in parsed.groups.items()}
    groups = {g: m for g, m in groups.items() if m}
    # Bad records are always reported (the file has them), unless their known subject is filtered out.
    bad = [b for b in parsed.bad if subjects is None or not b.subject or b.subject in subjects]
    return LoadedDataset(name=name, rows=out, fewshot=fewshot, groups=groups, bad=bad)
