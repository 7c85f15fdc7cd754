"""Judge prompts: chat messages for one judgement.

- MT-Bench: FastChat's own judge prompts, read from `judge_prompts.jsonl`
  (single-v1, single-math-v1, pair-v2, pair-math-v1 and their -multi-turn
  forms); "math" prompts are used with a reference answer.
- AlignBench: single grading on the dimensions of the question's answer type,
  against the reference answer, ending with a score dict whose '综合得分' is
  the 1-10 overall rating (the format of AlignBench's judge).
- AlpacaEval: pairwise preference between two outputs named m and M (the
  format of AlpacaEval's judges), answered with one identifier.
"""
from __future__ import annotations

import json
from pathlib import Path


class JudgePromptError(ValueError):
    pass


# ---- MT-Bench ------------------------------------------------------------
MT_BENCH_NAMES = {
    # (kind, multi_turn, with_reference) -> prompt name in judge_prompts.jsonl
    ("single", False, False): "single-v1",
    ("single", False, True): "single-math-v1",
    ("single", True, False): "single-v1-multi-turn",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", False, True): "pair-math-v1",
    ("pairwise", True, False): "pair-v2-multi-turn",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}


def load_mt_bench_prompts(path: str | Path) -> dict[str, dict]:
    p = Path(path)
    if not p.is_file():
        raise JudgePromptError(f"MT-Bench judge prompts not found: {p} (set judge.prompts_path)")
    prompts = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompts[obj["name"]] = {k: obj[k] for k in ("system_prompt", "prompt_template", "output_format", "type")}
        except (ValueError, KeyError) as e:
            raise JudgePromptError(f"{p}: line {lineno}: not a judge prompt ({e})") from None
    missing = sorted(set(MT_BENCH_NAMES.values()) - set(prompts))
    if missing:
        raise JudgePromptError(f"{p}: missing judge prompts {missing}")
    return prompts


def _messages(system: str, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def mt_bench_single(prompts: dict, turns: list[str], answers: list[str], refs: list[str]) -> list[dict]:
    """Grade the answer to the last turn (turn len(answers)); refs: [] or one per turn."""
    t = len(answers)
    p = prompts[MT_BENCH_NAMES[("single", t > 1, bool(refs))]]
    if t == 1:
        kw = {"question": turns[0], "answer": answers[0]}
    else:
        kw = {"question_1": turns[0], "question_2": turns[1], "answer_1": answers[0], "answer_2": answers[1]}
    kw.update({f"ref_answer_{i + 1}": r for i, r in enumerate(refs[:2])})
    return _messages(p["system_prompt"], p["prompt_template"].format(**kw))


def mt_bench_pair(prompts: dict, turns: list[str], answers_a: list[str], answers_b: list[str],
                  refs: list[str]) -> list[dict]:
    t = len(answers_a)
    p = prompts[MT_BENCH_NAMES[("pairwise", t > 1, bool(refs))]]
    if t == 1:
        kw = {"question": turns[0], "answer_a": answers_a[0], "answer_b": answers_b[0]}
    else:
        kw = {"question_1": turns[0], "question_2": turns[1], "answer_a_1": answers_a[0],
              "answer_a_2": answers_a[1], "answer_b_1": answers_b[0], "answer_b_2": answers_b[1]}
    kw.update({f"ref_answer_{i + 1}": r for i, r in enumerate(refs[:2])})
    return _messages(p["system_prompt"], p["prompt_template"].format(**kw))


# ---- AlignBench ----------------------------------------------------------
# Answer type of each subcategory, and the dimensions each type is judged on
# (AlignBench's configuration).
ALIGNBENCH_TYPES = {
    **dict.fromkeys(["常识知识", "阅读理解", "文本分类", "信息抽取", "字词理解", "文化理解", "物理", "化学", "计算机",
                     "生物医学", "经济", "天文", "历史", "音乐", "法律", "体育", "地理", "文学", "其他"], "事实与解释型回答"),
    **dict.fromkeys(["翻译", "实用文体写作", "创意文体写作", "专业文体写作", "其他写作类", "现实生活类", "游戏娱乐类",
                     "功能类", "现实名人类", "（虚拟）恋爱类"], "生成型回答"),
    **dict.fromkeys(["观点表达", "寻求建议"], "建议型回答"),
    **dict.fromkeys(["证明", "推理", "初等数学", "高等数学", "应用数学"], "逻辑推理型回答"),
}
ALIGNBENCH_DIMENSIONS = {
    "事实与解释型回答": ["事实正确性", "满足用户需求", "清晰度", "完备性"],
    "逻辑推理型回答": ["事实正确性", "满足用户需求", "逻辑连贯性", "完备性"],
    "生成型回答": ["事实正确性", "满足用户需求", "逻辑连贯性", "创造性", "丰富度"],
    "建议型回答": ["事实正确性", "满足用户需求", "公平与可负责程度", "创造性"],
}
ALIGNBENCH_DEFINITIONS = {
    "事实正确性": "回答中的信息是否准确，是否有可靠的事实依据。",
    "满足用户需求": "回答是否切中用户提问的目的，是否完整、恰当地回应了问题。",
    "清晰度": "回答是否条理清楚、表达简洁、易于理解。",
    "完备性": "回答是否覆盖了问题涉及的所有要点，没有重要遗漏。",
    "逻辑连贯性": "回答是否前后一致、推理严密，各部分之间衔接自然。",
    "创造性": "回答是否有新意，是否提出了独到的见解或方案。",
    "丰富度": "回答是否信息充实、细节丰富，并从多个角度展开。",
    "公平与可负责程度": "回答中的建议是否可行、负责，是否考虑了可能的风险，立场是否公正。",
}
_ALIGNBENCH_PROMPT = (
    "你是一位擅长评价文本质量的助手。请以公正评判者的身份，评价一个AI助手对用户提问的回答。"
    "这个回答属于{category}，请从以下维度进行评价：\n{dimensions}\n"
    "{reference_note}评价时请按以下步骤进行：\n"
    "1. {step_one}\n"
    "2. 逐个维度进行评价和解释，每个维度之后给出1到10的整数分。\n"
    "3. 综合各维度给出1到10的综合得分。事实正确性和满足用户需求最重要，它们决定综合得分的高低。"
    "回答与问题无关、有本质性的事实错误或含有有害内容时，综合得分为1到2分；"
    "没有严重错误但质量偏低、未能满足用户需求时为3到4分；"
    "基本满足要求但在部分维度上表现较差时为5到6分；"
    "{good_band}"
    "只有在各维度都接近满分、充分解决了用户的问题时，才能给9到10分。\n"
    "请先评价、后打分。在回答的最后，用下面的字典格式（包括花括号）给出全部分数，分数都是整数：\n"
    "{{'维度一': 分数, '维度二': 分数, ..., '综合得分': 分数}}，例如 {{'事实正确性': 9, '满足用户需求': 6, ..., '综合得分': 7}}。\n\n"
    "用户的提问：{question}\n"
    "{reference_block}"
    "[助手的答案开始]\n{answer}\n[助手的答案结束]\n"
)


def alignbench_dimensions(subcategory: str) -> list[str]:
    return ALIGNBENCH_DIMENSIONS[ALIGNBENCH_TYPES.get(subcategory, "事实与解释型回答")]


def alignbench_single(question: str, answer: str, reference: str, category: str, subcategory: str) -> list[dict]:
    dims = alignbench_dimensions(subcategory)
    listing = "".join(f"{i + 1}. {d}：{ALIGNBENCH_DEFINITIONS[d]}\n" for i, d in enumerate(dims))
    if reference:
        kw = {"reference_note": "我们会给出用户的提问、一份高质量的参考答案和需要你评价的AI助手的答案。",
              "step_one": "将助手的答案与参考答案比较，指出助手的答案有哪些不足，并说明原因。",
              "good_band": "与参考答案质量相当、各维度表现良好时为7到8分（参考答案可以得8分）；",
              "reference_block": f"[参考答案开始]\n{reference}\n[参考答案结束]\n"}
    else:
        kw = {"reference_note": "我们会给出用户的提问和需要你评价的AI助手的答案。",
              "step_one": "指出助手的答案有哪些不足，并说明原因。",
              "good_band": "质量良好、各维度表现良好时为7到8分；", "reference_block": ""}
    user = _ALIGNBENCH_PROMPT.format(category=category or "通用问答", dimensions=listing, question=question,
                                     answer=answer, **kw)
    return [{"role": "user", "content": user}]


# ---- AlpacaEval ----------------------------------------------------------
_ALPACA_SYSTEM = ("You are a careful evaluator of instruction-following language models. You compare the "
                  "outputs of two models for one instruction and say which output a human would prefer.")
_ALPACA_USER = (
    "Which of the two outputs below answers the instruction better? Judge helpfulness, accuracy, and how "
    "closely the instruction is followed. The order of the outputs and their length must not influence "
    "you.\n\n"
    "## Instruction\n\n{instruction}\n\n"
    "## Output (m)\n\n{output_m}\n\n"
    "## Output (M)\n\n{output_M}\n\n"
    "Reply with the identifier of the better output and nothing else: m or M."
)


def alpaca_pair(instruction: str, output_m: str, output_M: str) -> list[dict]:
    return _messages(_ALPACA_SYSTEM, _ALPACA_USER.format(instruction=instruction, output_m=output_m,
                                                         output_M=output_M))
