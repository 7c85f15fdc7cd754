"""AlpacaEval: a JSON list of {instruction, output, generator, dataset}.

One row per instruction (subject = its source `dataset`); `output` is the
reference (baseline) output the model's answer is compared with, pairwise.
`load_baseline` reads another model's outputs in the same layout, matched by
instruction.

Judged pairwise as AlpacaEval's judges do: the two outputs are named m and M,
and the judge answers with the identifier of the better one. The judge prompt
is AlpacaEval's own where `judge.prompts_path` names it: an annotator's prompt
file (evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt, the
prompt of the leaderboard's weighted_alpaca_eval_gpt4_turbo) or the
annotator's folder, whose configs.yaml names its prompt. Those files are chat
in alpaca_eval's text form ("<|im_start|>system\n...<|im_end|>") with
{instruction}, {output_1} (shown first: m) and {output_2} (M). Without a path,
our own wording (below) is the fallback.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import yaml

from raveval.config.schema import DatasetConfig
from raveval.tasks.verdicts import Verdict

from .common import BadRow, DatasetError, Parsed, RowError, existing, make_row, row_at
from .spec import (FALLBACK, OPEN_CHAT, Benchmark, JudgeMode, JudgeSetupError, Prompter, chat, no_config_path,
                   read_judge_file)


def _records(path: Path, bad: list[BadRow] | None) -> list[tuple[int, dict]]:
    """(index, item) of the file's JSON list; an item without a string `instruction` is a bad row."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8; save the file as UTF-8") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects")
    items = []
    for i, obj in enumerate(data):
        with row_at(bad, path, f"item {i}"):
            if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
                raise RowError("expected an object with a string `instruction`")
            items.append((i, obj))
    return items


def load_baseline(path: Path, rows: list[dict]) -> dict[str, list[str]]:
    """{row_id: [output]} of a baseline model's outputs file, matched to the rows by instruction."""
    outputs = {obj["instruction"]: str(obj.get("output") or "") for _, obj in _records(path, None)}
    return {r["row_id"]: [outputs[r["question"]]] for r in rows if r["question"] in outputs}


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "alpacaeval path", want_file=True)
    rows, bad = [], []
    for i, obj in _records(path, bad):
        row = make_row(str(obj.get("dataset") or ""), str(i), obj["instruction"], [], "")
        out = obj.get("output")
        row["reference"] = [str(out)] if out else []
        row["reference_generator"] = str(obj.get("generator") or "")
        rows.append(row)
    return Parsed(rows, {}, {}, bad)


# ---- judge prompt (our fallback wording) and verdict ---------------------------
_SYSTEM = ("You are a careful evaluator of instruction-following language models. You compare the "
           "outputs of two models for one instruction and say which output a human would prefer.")
_USER = (
    "Which of the two outputs below answers the instruction better? Judge helpfulness, accuracy, and how "
    "closely the instruction is followed. The order of the outputs and their length must not influence "
    "you.\n\n"
    "## Instruction\n\n{instruction}\n\n"
    "## Output (m)\n\n{output_m}\n\n"
    "## Output (M)\n\n{output_M}\n\n"
    "Reply with the identifier of the better output and nothing else: m or M."
)


def judge_messages(instruction: str, output_m: str, output_M: str) -> list[dict]:
    return chat(_SYSTEM, _USER.format(instruction=instruction, output_m=output_m, output_M=output_M))


def parse_verdict(text: str) -> Optional[str]:
    """'m' or 'M' (the identifiers of the two outputs)."""
    if not text:
        return None
    t = text.strip().strip("`\"'().[] \n")
    if t in ("m", "M"):
        return t
    found = re.findall(r"(?<![A-Za-z])(m|M)(?![A-Za-z])", text)
    return found[-1] if found else None


VERDICT = Verdict("alpaca", parse_verdict, "no m/M", first="m", guided=("m", "M"))


# ---- AlpacaEval's own prompt files ---------------------------------------------
PLACEHOLDERS = ("instruction", "output_1", "output_2")
_ROLES = ("system", "user", "assistant")


def _annotator_prompt(folder: Path) -> Path:
    """The prompt file an annotator folder's configs.yaml names ({name: {prompt_template: ...}})."""
    conf_file = folder / "configs.yaml"
    if not conf_file.is_file():
        raise JudgeSetupError(f"{folder}: no configs.yaml; give an AlpacaEval annotator folder "
                              f"(evaluators_configs/<annotator>/) or its prompt .txt file")
    try:
        data = yaml.safe_load(conf_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise JudgeSetupError(f"{conf_file}: not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or len(data) != 1 or not isinstance(next(iter(data.values())), dict):
        raise JudgeSetupError(f"{conf_file}: expected one annotator: {{name: {{prompt_template: ...}}}}")
    name, conf = next(iter(data.items()))
    kwargs = conf.get("completions_kwargs") or {}
    if any(k in kwargs for k in ("tools", "functions", "tool_choice", "function_call")):
        raise JudgeSetupError(f"{conf_file}: annotator {name} answers with a function call (a ranking); raveval "
                              f"reads a plain m/M answer: use weighted_alpaca_eval_gpt4_turbo or "
                              f"alpaca_eval_clf_gpt4_turbo")
    template = conf.get("prompt_template")
    if not isinstance(template, str):
        raise JudgeSetupError(f"{conf_file}: annotator {name} has no prompt_template")
    # alpaca_eval resolves it from evaluators_configs/, the folder's parent.
    for base in (folder.parent, folder):
        if (base / template).is_file():
            return base / template
    raise JudgeSetupError(f"{conf_file}: prompt_template {template} not found under {folder.parent}")


def chat_messages(text: str, where: Path) -> list[dict]:
    """alpaca_eval's chat text form: "<|im_start|>ROLE\nCONTENT<|im_end|>" blocks, each
    content stripped; "system name=X" keeps its name. Text without markers: one user message."""
    if "<|im_start|>" not in text:
        return [{"role": "user", "content": text.strip()}]
    out = []
    for block in text.split("<|im_start|>")[1:]:
        head, _, rest = block.partition("\n")
        role, *params = head.split() or [""]
        if role not in _ROLES:
            raise JudgeSetupError(f"{where}: unknown chat role {head.strip()!r} after <|im_start|> "
                                  f"(expected one of {', '.join(_ROLES)})")
        msg = {"role": role, "content": rest.split("<|im_end|>", 1)[0].strip()}
        msg.update({k: v for k, _, v in (p.partition("=") for p in params) if k == "name"})
        out.append(msg)
    return out


def load_judge_prompt(path: str | Path) -> list[dict]:
    """An AlpacaEval annotator's prompt (file or folder) as chat messages whose
    contents still hold the {instruction}, {output_1} and {output_2} placeholders."""
    p = Path(path)
    if p.is_dir():
        p = _annotator_prompt(p)
    text = read_judge_file(p, "AlpacaEval judge prompt")
    counts = {k: text.count("{" + k + "}") for k in PLACEHOLDERS}
    if any(n == 0 for n in counts.values()):
        raise JudgeSetupError(f"{p}: not an AlpacaEval judge prompt: placeholder(s) "
                              f"{['{' + k + '}' for k, n in counts.items() if n == 0]} missing")
    if any(n > 1 for n in counts.values()):
        raise JudgeSetupError(f"{p}: a batched prompt (several examples per call) is not supported; "
                              f"use an annotator with batch_size 1")
    return chat_messages(text, p)


def fill(template: list[dict], instruction: str, output_1: str, output_2: str) -> list[dict]:
    """The messages with the placeholders replaced (in one pass, so text in an
    output that looks like a placeholder stays as it is)."""
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    pattern = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
    return [{**m, "content": pattern.sub(lambda g: values[g.group(1)], m["content"])} for m in template]


def _prompts(cfg: DatasetConfig) -> str:
    if not cfg.judge.prompts_path:
        return FALLBACK
    p = Path(cfg.judge.prompts_path)
    return f"alpaca_eval {'annotator ' + p.name if p.is_dir() else p.name} ({p})"


def _pairwise(cfg: DatasetConfig) -> Prompter:
    no_config_path(cfg)
    if not cfg.judge.prompts_path:
        return lambda row, first, second: judge_messages(row["question"], first[0], second[0])
    template = load_judge_prompt(cfg.judge.prompts_path)
    return lambda row, first, second: fill(template, row["question"], first[0], second[0])


BENCHMARK = Benchmark(name="alpacaeval", load=load, family=OPEN_CHAT,
                      judge_modes={"pairwise": JudgeMode(VERDICT, _pairwise, _prompts)}, baseline=load_baseline,
                      instruction_index=True)
