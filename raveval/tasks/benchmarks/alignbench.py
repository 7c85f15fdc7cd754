"""AlignBench: JSON lines {question, capability, others: {subcategory, reference, question_id}}.

One row per question (subject = capability); judged by single grading on the
dimensions of the question's answer type, with the reference answer, and a
1-10 overall rating. Categories group as AlignBench reports them: 中文推理
(reasoning) and 中文语言 (language).
"""
from __future__ import annotations

from raveval.config.schema import DatasetConfig

from .common import DatasetError, Parsed, existing, make_row, read_jsonl

GROUPS = {
    "中文推理": ["数学计算", "逻辑推理"],
    "中文语言": ["基本任务", "中文理解", "综合问答", "文本写作", "角色扮演", "专业能力"],
}


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "alignbench path", want_file=True)
    rows = []
    for lineno, obj in read_jsonl(path):
        others = obj.get("others") or {}
        if not isinstance(obj.get("question"), str) or not isinstance(others, dict):
            raise DatasetError(f"{path}: line {lineno}: expected a string `question` and an `others` object")
        row_id = str(others.get("question_id", lineno - 1))
        row = make_row(str(obj.get("capability") or ""), row_id, obj["question"], [], "")
        ref = others.get("reference")
        row["reference"] = [str(ref)] if ref else []
        row["subcategory"] = str(others.get("subcategory") or "")
        rows.append(row)
    return Parsed(rows, {}, {g: list(m) for g, m in GROUPS.items()})
