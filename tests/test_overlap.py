"""Judging overlaps generation in one run: a second turn is asked as soon as
its first turn's answer exists, a judgement as soon as the answers it judges
exist; and a run stopped at any point resumes each row where it stopped.
A slow instant engine (no weights) and a real HTTP judge on 127.0.0.1."""
from __future__ import annotations

import json
import os
import time

import pyarrow.parquet as pq

from fake_judge import FakeChatServer
from raveval.results.store import JUDGEMENTS, Store
from raveval.tasks.benchmarks import mt_bench

N = 16  # two-turn questions


def write_mt_bench(tmp_path):
    q = tmp_path / "question.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "category": "writing" if i % 2 else "math",
                                     "turns": [f"q{i} turn one", f"q{i} turn two"]}) + "\n" for i in range(N)))
    p = tmp_path / "judge_prompts.jsonl"
    p.write_text("".join(json.dumps({"name": n, "type": "single", "system_prompt": "Grade.",
                                     "prompt_template": ("{question_1} {answer_1} {question_2} {answer_2}" if "multi" in n
                                                         else "{question} {answer}") + " [[rating]]",
                                     "output_format": "[[rating]]"}) + "\n" for n in mt_bench.PROMPT_NAMES.values()))
    return q, p


def config(tmp_path, srv, delay_s=1.0):
    from raveval.run.config import load_config

    q, p = write_mt_bench(tmp_path)
    return load_config("eval_mt_bench", [
        f"work_dir={tmp_path / 'work'}", "model=instant", f"++model.delay_s={delay_s}",
        f"datasets.mt_bench_single.path={q}", f"datasets.mt_bench_single.judge.prompts_path={p}",
        "datasets.mt_bench_single.judge.reference_path=null",
        f"judges.gpt4o.base_url={srv.base_url}", "judges.gpt4o.api_key_env=null",
        # Small model batches, one at a time: the model's rows come back over several seconds.
        "model_stream.batch_rows=2", "model_stream.callers=1", "model_stream.calls_per_caller=1",
        "judge_stream.batch_rows=2"])


def part_times(folder) -> list[tuple[float, list[int]]]:
    """(write time, turns of its rows) of each Parquet part in `folder`, oldest first."""
    out = []
    for name in os.listdir(folder):
        if name.endswith(".parquet"):
            path = os.path.join(folder, name)
            out.append((os.path.getmtime(path), pq.read_table(path, columns=["turn"]).column("turn").to_pylist()))
    return sorted(out)


def test_second_turns_and_judgements_start_before_generation_ends(ray_local, tmp_path):
    from raveval.run import evaluate

    with FakeChatServer(latency_s=0.05) as srv:
        cfg = config(tmp_path, srv)
        result = evaluate.run(cfg, log=lambda *_: None)
        wall = time.time() - time.monotonic()  # the server's times are monotonic, file times wall-clock
        asked = [e["t"] + wall for e in srv.log]
    assert not result.failed
    work = tmp_path / "work"
    preds = Store(work).read().to_pylist()
    assert len(preds) == 2 * N and all(r["error"] is None for r in preds)
    judged = Store(work, JUDGEMENTS).read().to_pylist()
    assert len(judged) == 2 * N and all(j["score"] == 7.0 for j in judged)
    parts = part_times(work / "predictions")
    last_turn1 = max(t for t, turns in parts if 1 in turns)
    first_turn2 = min(t for t, turns in parts if 2 in turns)
    last_answer = max(t for t, _ in parts)
    # The second turns were generated while first turns still were ...
    assert first_turn2 < last_turn1, "turn 2 waited for every turn 1"
    # ... and the judge was asked while the model still generated.
    assert min(asked) < last_answer, "the judge waited for the whole generation"
    assert result.stats["rows"] == 2 * N and result.stats["rows_turn"] == N and result.stats["judged"] == 2 * N


def test_resume_takes_each_row_from_where_it_stopped(ray_local, tmp_path):
    """Stored: every first turn; the second turns of half the rows; the judgements
    of a few. A re-run asks only what is missing, row by row."""
    from raveval.run import evaluate

    with FakeChatServer(latency_s=0.01) as srv:
        cfg = config(tmp_path, srv, delay_s=0.0)
        first = evaluate.run(cfg, log=lambda *_: None)
        assert not first.failed
        work = tmp_path / "work"
        preds = Store(work).read()
        judged = Store(work, JUDGEMENTS).read()
        # Keep every first turn, the second turn of even rows, the judgements of rows 0-3 only.
        keep = [r for r in preds.to_pylist() if r["turn"] == 1 or int(r["row_id"]) % 2 == 0]
        keep_j = [j for j in judged.to_pylist() if int(j["row_id"]) < 4]
        for folder in ("predictions", "judgements"):
            for name in os.listdir(work / folder):
                os.remove(work / folder / name)
        Store(work).write_part(preds.from_pylist(keep, schema=preds.schema))
        Store(work, JUDGEMENTS).write_part(judged.from_pylist(keep_j, schema=judged.schema))
        srv.log.clear()
        again = evaluate.run(cfg, log=lambda *_: None)
        asked = list(srv.log)
    assert not again.failed
    s = again.stats
    # Odd rows lost their second turn: generated again (and only those).
    assert s["rows"] == N // 2 and s["rows_turn"] == N // 2
    assert s["reused"] == N + N // 2
    # Rows 0-3 keep both judgements; the other rows' judgements are asked again.
    assert s["judged"] == 2 * (N - 4) == len(asked)
    assert again.summary.equals(first.summary)
