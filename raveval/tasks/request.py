"""The typed rows that stream through Ray Data, with their Arrow schemas.

`Request`: one model call (a prompt scored by choice log-likelihoods, or a
generation). `JudgeRequest`: one judgement by an LLM judge. Both carry a
`key` that hashes everything that changes their output, so a re-run reuses
finished rows. A stage turns a list of rows into an Arrow table with
`to_table` and reads the columns it declares.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from operator import attrgetter
from typing import Optional

import pyarrow as pa

from raveval.config.schema import DatasetConfig

Prompt = str | list[dict]


@dataclass(frozen=True)
class Request:
    key: str
    model: str
    dataset: str
    subject: str
    row_id: str
    mode: str                 # "ll": score each choice; "gen": generate, then extract
    chat: bool                # prompt holds chat messages as JSON
    prompt: str
    continuations: list[str]  # ll: what is scored after the prompt (" A".." D")
    params: str               # gen: generation parameters as canonical JSON; ll: ""
    choices: list[str]
    gold: str
    answer: str               # how a generation is read: choice, number or text
    judged: bool              # scored by an LLM judge (subjective), not against gold
    turn: int = 1             # multi-turn datasets (MT-Bench): the turn this prompt asks


REQUEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("model", pa.string()), ("dataset", pa.string()), ("subject", pa.string()),
    ("row_id", pa.string()), ("mode", pa.string()), ("chat", pa.bool_()), ("prompt", pa.string()),
    ("continuations", pa.list_(pa.string())), ("params", pa.string()), ("choices", pa.list_(pa.string())),
    ("gold", pa.string()), ("answer", pa.string()), ("judged", pa.bool_()), ("turn", pa.int64()),
])


@dataclass(frozen=True)
class JudgeRequest:
    key: str
    model: str                # the model under test
    dataset: str
    subject: str
    row_id: str
    turn: int
    order: str                # pairwise: "AB" (the model's answer first) or "BA"; single: ""
    endpoint: str             # judge endpoint name (conf/judges)
    kind: str                 # "single" or "pairwise"
    parser: str               # verdict parser (tasks.verdicts)
    messages: str             # the judge prompt, chat messages as JSON
    max_tokens: int
    temperature: float
    guided: list[str]         # allowed verdict strings (guided decoding); [] when off
    baseline: str             # pairwise: what the model is compared with; single: ""
    model_len: int            # characters of the judged answer (length-controlled win rate)
    baseline_len: int
    # Why this judgement cannot be asked (the model's answer is missing, ...):
    # it is written as an error row with this reason, never sent.
    pre_error: Optional[str] = None


JUDGE_REQUEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("model", pa.string()), ("dataset", pa.string()), ("subject", pa.string()),
    ("row_id", pa.string()), ("turn", pa.int64()), ("order", pa.string()), ("endpoint", pa.string()),
    ("kind", pa.string()), ("parser", pa.string()), ("messages", pa.string()), ("max_tokens", pa.int64()),
    ("temperature", pa.float64()), ("guided", pa.list_(pa.string())), ("baseline", pa.string()),
    ("model_len", pa.int64()), ("baseline_len", pa.int64()), ("pre_error", pa.string()),
])

SCHEMAS = {Request: REQUEST_SCHEMA, JudgeRequest: JUDGE_REQUEST_SCHEMA}


def to_table(rows: list[Request] | list[JudgeRequest]) -> pa.Table:
    """Rows of one type as an Arrow table with that type's schema (column by column)."""
    if not rows:
        raise ValueError("to_table: no rows")
    schema = SCHEMAS[type(rows[0])]
    return pa.table({f.name: pa.array(list(map(attrgetter(f.name), rows)), type=f.type) for f in schema},
                    schema=schema)


def replace(row, **changes):
    return dataclasses.replace(row, **changes)


def row_key(model_id: dict, dataset: str, row_id: str, prompt: str, continuations: list[str], params: str,
            mode: str) -> str:
    """Stable key of one request: same model, row, prompt and parameters -> same key."""
    return RowKeys(model_id, dataset)(row_id, prompt, continuations, params, mode)


class RowKeys:
    """`row_key` for the rows of one model and dataset: the JSON of their shared
    head is made once (the same bytes as row_key's list: keys of stored rows stay valid)."""

    def __init__(self, model_id: dict, dataset: str):
        self.head = "[" + ", ".join(json.dumps(x, ensure_ascii=False, sort_keys=True) for x in (model_id, dataset))

    def __call__(self, row_id: str, prompt: str, continuations: list[str], params: str, mode: str) -> str:
        tail = json.dumps([row_id, prompt, continuations, params, mode], ensure_ascii=False)
        return hashlib.sha256((self.head + ", " + tail[1:]).encode()).hexdigest()[:32]


def encode_prompt(prompt: Prompt) -> tuple[str, bool]:
    """Arrow-friendly form: (text, is_chat); chat messages as JSON."""
    if isinstance(prompt, str):
        return prompt, False
    return json.dumps(prompt, ensure_ascii=False), True


def decode_prompt(text: str, chat: bool) -> Prompt:
    return json.loads(text) if chat else text


def gen_params(d: DatasetConfig) -> str:
    """A dataset's generation parameters as canonical JSON (part of each row's key)."""
    g = d.generation
    return json.dumps({"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                       "top_k": g.top_k, "stop": list(g.stop), "seed": g.seed}, sort_keys=True)


def build_requests(name: str, d: DatasetConfig, loaded, model: str, model_id: dict) -> list[Request]:
    """One request per loaded row: its prompt (with the k shots), what is scored, and its key."""
    from raveval.tasks import prompts

    chat = d.prompt.format == "chat"
    params = gen_params(d) if d.mode == "gen" else ""
    build, keys = prompts.PromptBuilder(d), RowKeys(model_id, name)
    out = []
    for row in loaded.rows:
        if d.mode == "ll" and not row["choices"]:
            raise prompts.PromptError(f"row {row['row_id']!r} has no choices, so it cannot run in ll mode")
        shots = prompts.pick_shots(d, loaded.fewshot, row)
        text, is_chat = encode_prompt(build(row, shots))
        conts = prompts.continuations(row, chat) if d.mode == "ll" else []
        out.append(Request(
            key=keys(row["row_id"], text, conts, params, d.mode),
            model=model, dataset=name, subject=row["subject"], row_id=row["row_id"], mode=d.mode, chat=is_chat,
            prompt=text, continuations=conts, params=params, choices=list(row["choices"]), gold=row["gold"],
            answer=d.answer, judged=d.judge is not None))
    return out


def bad_requests(name: str, d: DatasetConfig, loaded, model: str, model_id: dict) -> dict[str, tuple[Request, str]]:
    """The records of the file that are not rows (`loaded.bad`), as requests that are
    never sent: key -> (request, why). Each is written as an error row naming its
    file and line, and counts as an error in the summary."""
    params = gen_params(d) if d.mode == "gen" else ""
    out = {}
    for b in loaded.bad:
        key = row_key(model_id, name, b.row_id, "", [], params, d.mode)
        out[key] = (Request(key=key, model=model, dataset=name, subject=b.subject, row_id=b.row_id, mode=d.mode,
                            chat=False, prompt="", continuations=[], params=params, choices=[], gold="",
                            answer=d.answer, judged=d.judge is not None), b.error)
    return out
