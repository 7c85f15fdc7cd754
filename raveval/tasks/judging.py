"""What the judge stage has to do for a row of a judged dataset, computed from the
row and the model's answers as they come in:

- `next_turn`: multi-turn rows (MT-Bench): the request of turn k is the chat
  of turns 1..k-1 with the model's own answers, then turn k;
- `DatasetJudge.row`: one request per (row, turn) for single grading, one per
  (row, turn, order) for pairwise comparison; a judgement that cannot be
  asked (the model's or the baseline's answer is missing) is a row with
  `pre_error` set, so it is counted as an error row and never lost;
- `interpret`: the verdict of a judge reply (score / A,B,tie -> the model's
  outcome), keeping the raw text.

What differs between benchmarks (the judge modes, their prompts and verdict
parsers, the baseline's answers) comes from the benchmark's spec; this module
only walks rows, turns and orders.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from raveval.tasks.benchmarks import BENCHMARKS, benchmark
from raveval.tasks.benchmarks.spec import JudgeSetupError  # what `check` raises (a benchmark's setup too)
from raveval.tasks.request import JudgeRequest, Request, replace, row_key

# Every verdict parser by the name judgement rows store (their `parser`).
VERDICTS = {m.verdict.name: m.verdict for b in BENCHMARKS for m in b.judge_modes.values()}


def check(name: str, d) -> None:
    """Config checks of a judged dataset that need no model output (run at plan time)."""
    j = d.judge
    if j is None:
        return
    spec = benchmark(d.loader)
    if not spec.judge_modes:
        judged = [b.name for b in BENCHMARKS if b.judge_modes]
        raise JudgeSetupError(f"judge: loader {d.loader!r} has no judge prompts (use one of {judged})")
    if j.mode not in spec.judge_modes:
        raise JudgeSetupError(f"judge.mode {j.mode!r} is not available for {d.loader} "
                              f"(have: {list(spec.judge_modes)})")
    if d.mode != "gen":
        raise JudgeSetupError("a judged dataset needs mode: gen")
    mode = spec.judge_modes[j.mode]
    mode.setup(d)
    if j.guided and not mode.verdict.guided:
        raise JudgeSetupError(f"judge.guided is not available for {d.loader} {j.mode} "
                              f"(its verdict, {mode.verdict.name!r}, is not one of a fixed set of strings)")
    if j.baseline_path:
        if not Path(j.baseline_path).is_file():
            raise JudgeSetupError(f"judge.baseline_path not found: {j.baseline_path}")
        if j.mode == "pairwise" and spec.baseline is None:
            raise JudgeSetupError(f"judge.baseline_path: {d.loader} cannot read another model's answers; "
                                  "use baseline: reference")


def prompts_used(d) -> str:
    """Which judge prompts a judged dataset config gets, in words: the benchmark's
    published files or our fallback wording (the dry run and the summary say it)."""
    spec = benchmark(d.loader)
    return spec.judge_modes[d.judge.mode].prompts(d)


def n_turns(row: dict) -> int:
    return len(row.get("turns") or [row["question"]])


# ---- multi-turn ------------------------------------------------------------
def next_turn(dplan, row: dict, prev: Request, answer: str, model_id: dict) -> Request:
    """The request of turn prev.turn + 1 (MT-Bench): the chat so far, the model's
    own answer to the previous turn, then the row's next user turn."""
    turn = prev.turn + 1
    messages = json.loads(prev.prompt) + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": row["turns"][turn - 1]},
    ]
    text = json.dumps(messages, ensure_ascii=False)
    return replace(prev, turn=turn, prompt=text,
                   key=row_key(model_id, dplan.name, row["row_id"], text, [], prev.params, prev.mode))


# ---- judge requests ----------------------------------------------------------
class DatasetJudge:
    """The judgements of one dataset, built row by row as the model's answers
    come in. `endpoint`: the judge's EndpointConfig as a dict."""

    def __init__(self, dplan, endpoint: dict, model: str):
        d, j = dplan.cfg, dplan.cfg.judge
        spec = benchmark(d.loader)
        self.dplan, self.endpoint, self.model, self.j = dplan, endpoint, model, j
        self.mode = spec.judge_modes[j.mode]
        self.prompt = self.mode.setup(d)
        self.guided = list(self.mode.verdict.guided) if j.guided else []
        self.pairwise = j.mode == "pairwise"
        # Pairwise against another model: its answers; against "reference": each row's reference answers.
        self.baseline = (spec.baseline(Path(j.baseline_path), dplan.rows)
                         if self.pairwise and j.baseline_path else None)

    def row(self, row: dict, answers: list[str], missing: str | None = None,
            turns: range | None = None) -> list[JudgeRequest]:
        """The judgements of `row`'s `turns` (default: all): `answers` are the model's
        answers to its first turns; `missing` says why the next one is not there (its
        judgement, and the later turns', become rows with `pre_error`)."""
        j, out = self.j, []
        refs = list(row.get("reference") or [])
        for t in turns or range(1, n_turns(row) + 1):
            pre_error = None
            if t > len(answers):
                pre_error = f"model answer of turn {len(answers) + 1} missing ({missing or 'no prediction'})"
            fields = dict(model=self.model, dataset=self.dplan.name, subject=row["subject"], row_id=row["row_id"],
                          turn=t, endpoint=j.endpoint, kind=j.mode, parser=self.mode.verdict.name,
                          max_tokens=j.max_tokens, temperature=j.temperature, guided=self.guided,
                          baseline=j.baseline if self.pairwise else "",
                          model_len=len(answers[t - 1]) if pre_error is None else 0, baseline_len=0)
            mine = answers[:t]
            if not self.pairwise:
                messages = self.prompt(row, mine) if pre_error is None else []
                out.append(_request(self.endpoint, fields, "", messages, pre_error))
                continue
            # pairwise: the model against the baseline (or the reference answers)
            other = (self.baseline or {}).get(row["row_id"]) if j.baseline_path else refs
            if pre_error is None and (not other or len(other) < t):
                pre_error = (f"no {j.baseline} answer for turn {t}" if j.baseline_path
                             else f"no reference answer for turn {t}")
            if pre_error is None:
                fields["baseline_len"] = len(other[t - 1])
            for order in (("AB", "BA") if j.both_orders else ("AB",)):
                messages = []
                if pre_error is None:
                    first, second = (mine, other[:t]) if order == "AB" else (other[:t], mine)
                    messages = self.prompt(row, first, second)
                out.append(_request(self.endpoint, fields, order, messages, pre_error))
        return out


def _request(endpoint: dict, fields: dict, order: str, messages: list[dict], pre_error) -> JudgeRequest:
    """The judgement row, keyed by everything that changes the judge's reply."""
    r = {**fields, "order": order, "messages": json.dumps(messages, ensure_ascii=False), "pre_error": pre_error}
    blob = json.dumps([endpoint.get("base_url"), endpoint.get("model"), r["model"], r["dataset"], r["row_id"],
                       r["turn"], r["order"], r["parser"], r["messages"], r["max_tokens"], r["temperature"],
                       r["guided"]], ensure_ascii=False, sort_keys=True)
    return JudgeRequest(key=hashlib.sha256(blob.encode()).hexdigest()[:32], **r)


# ---- verdicts ----------------------------------------------------------------
def interpret(parser: str, order: str, text: str) -> dict:
    """score / verdict / outcome (the model's: 1 win, 0.5 tie, 0 loss) / ratings, or error."""
    verdict = VERDICTS.get(parser)
    if verdict is None:
        return {"score": None, "verdict": None, "outcome": None, "ratings": None,
                "error": f"unknown parser {parser!r}"}
    return verdict.read(order, text)
