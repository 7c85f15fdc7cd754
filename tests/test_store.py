"""Parquet parts, resume keys, latest-wins reads, summary files."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from raveval.results.store import Store
from raveval.tasks.request import row_key


def table(keys, errors):
    return pa.table({"key": keys, "error": pa.array(errors, pa.string()), "v": list(range(len(keys)))})


def test_row_key_is_stable_and_sensitive():
    mid = {"name": "m", "path": "p"}
    k = row_key(mid, "d", "1", "prompt", [" A"], "", "ll")
    assert k == row_key(dict(reversed(list(mid.items()))), "d", "1", "prompt", [" A"], "", "ll")
    assert k != row_key(mid, "d", "1", "prompt!", [" A"], "", "ll")
    assert k != row_key({**mid, "path": "q"}, "d", "1", "prompt", [" A"], "", "ll")
    assert k != row_key(mid, "d", "1", "prompt", [" A"], '{"max_new_tokens": 3}', "ll")


def test_parts_resume_keys_and_latest_wins(tmp_path):
    s = Store(tmp_path)
    assert s.read() is None and s.finished_keys() == set()
    s.write_part(table(["a", "b", "c"], [None, "boom", None]))
    assert s.finished_keys() == {"a", "c"}
    # A later run retries b and succeeds: the newest row for a key wins.
    s2 = Store(tmp_path)
    s2.write_part(table(["b"], [None]))
    t = s2.read()
    assert sorted(t.column("key").to_pylist()) == ["a", "b", "c"]
    assert s2.finished_keys() == {"a", "b", "c"}
    assert s2.read(columns=["error"]).column_names == ["key", "error"]
    assert not list((tmp_path / "predictions").glob("*.tmp"))


def test_summary_files(tmp_path):
    s = Store(tmp_path)
    summary = pa.table({"model": ["m"], "dataset": ["d"], "metric": ["accuracy"], "value": [0.5], "n": [2], "errors": [0]})
    paths = s.write_summary(summary, "| table |\n")
    assert paths == [str(tmp_path / n) for n in ("summary.parquet", "summary.csv", "summary.md")]
    assert pq.read_table(paths[0]).equals(summary)
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == '"model","dataset","metric","value","n","errors"'
