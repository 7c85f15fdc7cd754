"""Loss is retried inside the run: a batch whose Serve replica (or its node) died
is sent again, to a live replica; rows whose engine call failed are not.

Unit tests drive ModelCaller with a fake Serve handle; the integration tests
kill a replica of a real local Ray mid-run, and remove a worker node of a
simulated multi-node cluster (ray.cluster_utils, in a subprocess) mid-run.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from ray import exceptions as rx

from raveval.stream import model_stage
from raveval.stream.model_stage import ModelCaller, replica_lost

from cluster_script import run_cluster_script
from replica_loss_cluster import prediction_keys, replica_actors, wait_for_predictions, write_synth_run

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- ModelCaller with a fake handle

class FakeHandle:
    """Stands for Serve's streaming handle: `stream_batch.remote(rows)` plays the next
    outcome: an exception to raise, a callable making the results (streamed one
    row at a time), or Partial (some rows stream back, then the replica is lost)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.sent: list[list] = []  # the requests of each call
        self.stream_batch = self

    @property
    def calls(self) -> int:
        return len(self.sent)

    def remote(self, requests):
        self.sent.append(list(requests))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

        async def stream():
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, Partial):
                for i in range(outcome.rows):
                    yield [(i, ok(requests[i:i + 1])[0])]
                raise outcome.error
            for i, res in reversed(list(enumerate(outcome(requests)))):  # in any order
                yield [(i, res)]
        return stream()


class Partial:
    def __init__(self, rows: int, error: BaseException):
        self.rows, self.error = rows, error


def ok(requests):
    return [{"logprobs": [-1.0, -2.0], "error": None, "latency_s": 0.1} for _ in requests]


def row_failed(requests):
    return [{"error": "ValueError: prompt too long", "latency_s": 0.1}, *ok(requests[1:])]


ROWS = [{"mode": "ll", "chat": False, "prompt": f"p{i}", "continuations": ["a", "b"], "params": None,
         "answer": "choice", "judged": False, "gold": "A", "choices": ["a", "b"]} for i in range(3)]


def caller(handle: FakeHandle) -> ModelCaller:
    c = ModelCaller.__new__(ModelCaller)  # no Serve: the handle is the fake

    async def ready():
        return None
    c.handle, c.ready, c._wait_ready = handle, None, ready
    return c


def process(c: ModelCaller, rows) -> list[dict]:
    """The caller's results, in the rows' order (each row exactly once)."""
    async def collect():
        return [pair async for finished in c.process(rows) for pair in finished]
    pairs = asyncio.run(collect())
    assert sorted(i for i, _ in pairs) == list(range(len(rows))), pairs
    return [res for _, res in sorted(pairs, key=lambda p: p[0])]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(model_stage, "BACKOFF_S", 0.001)


def test_lost_replica_call_goes_again_and_rows_are_scored():
    handle = FakeHandle(rx.ActorDiedError(), rx.ActorUnavailableError("replica unreachable", None), ok)
    out = process(caller(handle), ROWS)
    assert handle.calls == 3
    assert [r["error"] for r in out] == [None] * 3
    assert [r["prediction"] for r in out] == ["A"] * 3 and all(r["correct"] for r in out)


def test_rows_back_before_the_loss_are_kept_and_only_the_rest_go_again():
    handle = FakeHandle(Partial(2, rx.ActorDiedError()), ok)
    out = process(caller(handle), ROWS)
    assert handle.calls == 2
    assert [r["prompt"] for r in handle.sent[1]] == ["p2"]  # the row that was not back
    assert [r["error"] for r in out] == [None] * 3 and all(r["correct"] for r in out)


def test_row_errors_from_the_engine_are_not_retried():
    handle = FakeHandle(row_failed)
    out = process(caller(handle), ROWS)
    assert handle.calls == 1
    assert out[0]["error"] == "ValueError: prompt too long" and out[0]["prediction"] is None
    assert [r["error"] for r in out[1:]] == [None, None]


def test_a_failing_call_that_is_not_a_loss_is_not_retried():
    handle = FakeHandle(rx.RayTaskError("stream_batch", "Traceback ...", TypeError("bad argument")))
    out = process(caller(handle), ROWS)
    assert handle.calls == 1
    assert all(r["error"].startswith("RayTaskError") and "\n" not in r["error"] for r in out)


def test_after_the_last_attempt_rows_name_the_cause_and_the_attempts():
    handle = FakeHandle(rx.ActorDiedError())
    out = process(caller(handle), ROWS)
    assert handle.calls == model_stage.MAX_ATTEMPTS == 5
    for r in out:
        assert r["error"].startswith("replica lost on all 5 attempts of this batch; last: ActorDiedError")
        assert r["prediction"] is None and r["correct"] is None
    assert len({id(r) for r in out}) == 3  # one result per row


def test_what_counts_as_a_lost_replica():
    from ray.serve import exceptions as sx

    assert replica_lost(rx.ActorDiedError()) and replica_lost(rx.NodeDiedError("node gone"))
    assert replica_lost(rx.WorkerCrashedError()) and replica_lost(sx.ReplicaUnavailableError("r1"))
    # Serve may hand the death back wrapped in the task's error.
    assert replica_lost(rx.RayTaskError("stream_batch", "tb", rx.ActorDiedError()))
    assert not replica_lost(rx.RayTaskError("stream_batch", "tb", ValueError("bug")))
    assert not replica_lost(sx.RequestCancelledError("r1"))  # the run is stopping: no retry
    assert not replica_lost(ValueError("x"))


def test_backoff_grows_and_is_bounded(monkeypatch):
    monkeypatch.setattr(model_stage, "BACKOFF_S", 0.5)
    waits = [model_stage.backoff_s(a) for a in range(1, 10)]
    assert 0.25 <= waits[0] <= 0.5 and waits[2] >= 1.0
    assert max(waits) <= model_stage.BACKOFF_MAX_S


# ---------------------------------------------------------------- a replica killed mid-run

def check_every_key_once(work_dir, plan_keys) -> None:
    written, errors = prediction_keys(work_dir)
    dups = {k: n for k, n in written.items() if n > 1}
    assert not dups, f"{len(dups)} keys written more than once, e.g. {list(dups.items())[:3]}"
    assert set(written) == set(plan_keys), f"{len(set(plan_keys) - set(written))} keys missing"
    assert errors == 0, f"{errors} error rows"


def test_killed_replica_mid_run_loses_no_row(ray_local, tmp_path):
    ray = ray_local
    from raveval.run.config import load_config
    from raveval.run.evaluate import run

    # Two replicas of half a CPU each leave Ray Data a CPU on a 2-CPU machine; small
    # batches keep many calls in flight, so the killed replica has some.
    cfg = load_config(str(write_synth_run(tmp_path, 2000)),
                      ["model.replicas=2", "model.num_cpus=0.5", "model_stream.batch_rows=16"])
    killed: dict = {}

    def kill_one_replica():
        if not wait_for_predictions(cfg.work_dir, 300):
            killed["error"] = "no predictions within 300 s"
            return
        reps = replica_actors()
        if not reps:
            killed["error"] = "no replica actor found"
            return
        killed["rows_before"] = sum(prediction_keys(cfg.work_dir)[0].values())
        ray.kill(ray.get_actor(reps[0]["name"], namespace=reps[0]["namespace"]), no_restart=False)
        killed["name"] = reps[0]["name"]

    killer = threading.Thread(target=kill_one_replica, daemon=True)
    killer.start()
    result = run(cfg, log=lambda *_: None)
    killer.join(timeout=30)
    assert "name" in killed, killed
    n = len(result.plan.requests)
    assert killed["rows_before"] < n, "the run ended before the replica was killed"
    assert not result.failed
    check_every_key_once(cfg.work_dir, [r.key for r in result.plan.requests])
    assert result.summary.to_pylist()[0]["errors"] == 0
    # The kill hit calls in flight, and they went again (not a vacuous pass).
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    said = [p for p in logs.glob("worker-*.err") if "replica lost (" in p.read_text(errors="replace")]
    assert said, "no caller logged a retried batch"


# ---------------------------------------------------------------- a worker node removed mid-run

def test_removed_node_mid_run_loses_no_row(tmp_path):
    """Head (1 CPU, for Ray Data) and three 2-CPU workers; 2 replicas of 2 CPUs, so
    replicas sit on workers; the worker node of one is removed once rows flow."""
    rep, out = run_cluster_script("replica_loss_cluster.py", [str(tmp_path), "1000"], 480, "node-loss run")
    assert rep["removed"] in rep["replica_nodes"], rep
    # The run's sink holds early rows: it sits on the driver's node (the head), even
    # with the head's one CPU busy, so losing a worker loses none of them.
    assert rep["sink_nodes"] == [rep["head"]], rep
    assert rep["rows_before"] < len(rep["planned"]), "the run ended before the node was removed"
    written = rep["written"]
    assert not {k: n for k, n in written.items() if n > 1}, "keys written more than once"
    assert set(written) == set(rep["planned"]) and rep["errors"] == 0 and not rep["failed"], (
        len(set(rep["planned"]) - set(written)), rep["errors"], rep["failed"])
    assert "replica lost (" in out, "no caller logged a retried batch"
