"""The streams of one run, at once: the model's rows of every dataset and turn,
and the judgements, each row written within about a second of finishing.

A row of a judged dataset moves on as soon as its answer exists: MT-Bench's
second turn is asked with the model's first answer, and the judgement of a
turn as soon as the answers it judges exist, while the model keeps
generating for the other rows. Ray Data streams a fixed table, so the rows that become ready
go out in waves (stream.waves): at most MAX_WAVES of each kind run at once,
and each new wave takes every row that became ready meanwhile. A resumed run
takes each row from where it stopped: turns and judgements already stored are
reused, the rest is asked.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pyarrow as pa

from raveval.http.keys import MissingApiKey, read_key
from raveval.http.limiter import ensure_shared_limiter
from raveval.results.store import Store
from raveval.run.config import RunConfig
from raveval.run.plan import Plan
from raveval.serving.deploy import ModelStartError, deploy, running_warm, watch_ready
from raveval.stream.cluster import check_resources, init_ray
from raveval.stream.judge_stage import error_rows, judge_stage
from raveval.stream.metrics import StreamMetrics
from raveval.stream.model_stage import model_stage
from raveval.stream.progress import Progress
from raveval.stream.waves import Waves
from raveval.tasks.judging import DatasetJudge, n_turns, next_turn
from raveval.tasks.request import Request, to_table

# Waves of one kind running at once: one streams while the next fills, so
# neither the engine nor the judge's budget waits for a wave's last batch.
MAX_WAVES = 2
# How often the driver looks up from an idle queue (waves bound their own waits).
POLL_S = 1.0


class Stopped(BaseException):
    """The run's `stop` event was set (a signal reached the main thread of a run whose
    models stream side by side in their own threads): its streams end, then the run."""


def start_ray(cfg: RunConfig, log=print) -> None:
    for line in init_ray(cfg.ray_address, http_port=cfg.http_port if cfg.model.http_route else None):
        log(line)


class Model:
    """The run's model deployment, started when the first model row is sent (a
    run that only judges stored answers starts none). A warm deployment of the
    same model (raveval serve up) serves the run instead; it is not the run's."""

    def __init__(self, cfg: RunConfig, log, run_id: str):
        self.cfg, self.log, self.run_id = cfg, log, run_id
        self.app = None
        self.ready = None  # the thread that notes when the app serves (serving.deploy.watch_ready)
        self.t0 = None

    def stage(self, n_rows: int):
        if self.app is None:
            self._start(n_rows)
        ms = self.cfg.model_stream
        # Calls in flight scale with the replicas: `callers` callers per replica keep each one busy.
        per_replica = ms.model_copy(update={"callers": ms.callers * self.cfg.model.max_replicas})
        return model_stage(self.app, per_replica, self.cfg.startup_timeout_s)

    def _start(self, n_rows: int) -> None:
        cfg, m = self.cfg, self.cfg.model
        self.t0 = time.perf_counter()
        # On a cluster the weights may live on the GPU nodes only; here a missing path can only fail.
        missing = cfg.ray_address == "local" and m.missing_weights()
        if missing:
            raise ModelStartError(f"model {m.name}: {missing}")
        # The driver reads the API model's key (engine openai) and hands it to the replicas.
        api_key = read_key(m.endpoint(), f"model {m.name}")
        start_ray(cfg, self.log)
        check_resources(m, local=cfg.ray_address == "local")
        ms = cfg.model_stream
        warm = running_warm(m)
        # Two waves stream at once (MAX_WAVES): the replicas take both waves' calls.
        self.app = warm or deploy(m, max_ongoing=ms.callers * ms.calls_per_caller * MAX_WAVES, run_id=self.run_id,
                                  api_key=api_key)
        self.log(f"model {m.name} " + (f"on the warm deployment {warm}" if warm else "deploying")
                 + f" ({time.perf_counter() - self.t0:.1f}s); streaming {n_rows} rows")
        need = f"{m.min_replicas} x ({m.resources().describe()})"
        self.ready = watch_ready(self.app, self.log, cfg.startup_timeout_s, need)

    def start_error(self) -> ModelStartError | None:
        """Why the model could not start, once the watcher knows (the stream fails then)."""
        if self.ready is None:
            return None
        self.ready.join(timeout=5)
        return ModelStartError(f"model {self.cfg.model.name}: {self.ready.error}") if self.ready.error else None

    def close(self, wait: bool = True) -> None:
        if self.ready is not None:
            # Before Ray goes: the watcher would start it again, and a thread still inside
            # Ray as it goes makes Ray end the process. It looks up every 0.2 s.
            self.ready.stop = True
            self.ready.join(timeout=5 if wait else 1)


class Pipeline:
    def __init__(self, cfg: RunConfig, plan: Plan, store: Store, jstore: Store, answers: dict[str, dict],
                 log=print, *, run_id: str, served: Counter, stop: threading.Event | None = None):
        """`answers`: the stored results of the judged datasets' rows, by key
        ({prediction, error}); `served` counts the rows each (node, replica) computed;
        `stop`: set by another thread to end the run (`Stopped`)."""
        self.cfg, self.plan, self.store, self.jstore, self.log = cfg, plan, store, jstore, log
        self.stop = stop
        self.run_id, self.served = run_id, served
        self.answers = dict(answers)
        self.judged = {d.name: d for d in plan.datasets if d.cfg.judge is not None and not d.error}
        self.by_turn = {n: {(r.row_id, r.turn): r for r in d.requests} for n, d in self.judged.items()}
        self.rows = {n: {row["row_id"]: row for row in d.rows} for n, d in self.judged.items()}
        self.judges = {n: DatasetJudge(d, cfg.judges[d.cfg.judge.endpoint].model_dump(), cfg.model.name)
                       for n, d in self.judged.items()}
        for d in self.judged.values():
            d.judge_requests = []
        self.judged_keys = jstore.finished_keys() if cfg.resume and self.judged else set()
        # The driver reads each judge's key once and hands it to the callers (they may run on
        # nodes without it). Endpoints whose key is not set here cannot be asked: their rows fail with that reason.
        self.api_keys, self.missing_key = {}, {}
        for name in sorted({d.cfg.judge.endpoint for d in self.judged.values()}):
            try:
                self.api_keys[name] = read_key(cfg.judges[name], f"judge {name}")
            except MissingApiKey as e:
                self.missing_key[name] = str(e)
        self.judged_turns: dict[tuple[str, str], int] = {}  # (dataset, row id) -> turns whose judgements are asked
        self.to_model: list[Request] = []
        self.to_judge: list = []
        self.cannot_judge: list = []  # (request, why): written as error rows, never sent
        self.model = Model(cfg, log, run_id)
        self.waves = Waves()
        self.stats = Counter()
        self.model_progress = Progress("model", {}, log)
        self.judge_progress = Progress("judge", {}, log) if self.judged else None
        self.metrics: dict[str, StreamMetrics] = {}  # by stream, made once Ray runs (its metrics need it)
        self.limiters: set[str] = set()
        self.times: dict[str, float] = {}

    # ---- what is ready to ask ----------------------------------------------
    def first(self, todo: list[Request]) -> None:
        """The work a run starts with: the model rows not finished yet, and for each
        row of a judged dataset the next turn or the judgements its stored answers allow."""
        self._send_model(todo)
        for name, d in self.judged.items():
            for row in d.rows:
                self._advance(name, row)

    def _advance(self, name: str, row: dict) -> None:
        """Walk a judged row's turns over the answers that exist: queue its next turn,
        and ask the judgements of the turns whose answers exist (all of them, the later
        ones with the reason, once a turn failed)."""
        by_turn, answers, missing, waiting = self.by_turn[name], [], None, False
        for t in range(1, n_turns(row) + 1):
            req = by_turn.get((row["row_id"], t))
            if req is None:  # t >= 2, and the answer to turn t - 1 exists
                req = next_turn(self.judged[name], row, by_turn[(row["row_id"], t - 1)], answers[-1],
                                self.plan.model_id)
                by_turn[(row["row_id"], t)] = req
                self.judged[name].requests.append(req)
                if req.key in self.answers:
                    self.stats["reused"] += 1
                else:
                    self._send_model([req])
                    waiting = True
                    break
            got = self.answers.get(req.key)
            if got is None:
                waiting = True  # asked, not answered yet
                break
            if got.get("error") or got.get("prediction") is None:
                missing = got.get("error") or "no prediction"
                break
            answers.append(got["prediction"])
        upto = len(answers) if waiting else n_turns(row)
        done = self.judged_turns.get((name, row["row_id"]), 0)
        if upto > done:
            self.judged_turns[(name, row["row_id"])] = upto
            self._send_judge(self.judges[name].row(row, answers, missing, range(done + 1, upto + 1)))

    def _send_judge(self, reqs: list) -> None:
        self.judged[reqs[0].dataset].judge_requests.extend(reqs)
        for r in reqs:
            why = r.pre_error or self.missing_key.get(r.endpoint)
            if r.key in self.judged_keys:
                self.stats["judge_reused"] += 1
            elif why:
                self.cannot_judge.append((r, why))
            else:
                self.to_judge.append(r)
        self.judge_progress.add(Counter(r.dataset for r in reqs if r.key not in self.judged_keys))

    def _send_model(self, reqs: list[Request]) -> None:
        if reqs:
            self.to_model += reqs
            self.model_progress.add(Counter(r.dataset for r in reqs))

    # ---- the streams ---------------------------------------------------------
    def run(self, todo: list[Request], preflight) -> dict:
        """Stream until every row has its answer and every answer its judgements.
        `preflight(judges, model)`: checks the endpoints about to be asked."""
        self.first(todo)
        try:
            if self.cfg.preflight and (self.to_model or self.to_judge or self.cannot_judge):
                # Every judge when the model runs (they will be asked once the answers exist),
                # else those with judgements to ask: a missing key fails here, in seconds.
                judges = ({d.cfg.judge.endpoint for d in self.judged.values()} if self.to_model else
                          {r.endpoint for r in self.to_judge} | {r.endpoint for r, _ in self.cannot_judge
                                                                  if r.endpoint in self.missing_key})
                preflight(judges, bool(self.to_model))
            self._write_cannot_judge()
            if self.to_model or self.to_judge:
                start_ray(self.cfg, self.log)
            while True:
                if self.stop is not None and self.stop.is_set():
                    raise Stopped()
                self._launch()
                if not self.waves.running:
                    break
                event = self.waves.next(POLL_S)
                if event is None or (event.batch is None and event.error is None):
                    continue
                if event.error is not None:
                    if event.wave.kind == "model":
                        raise self.model.start_error() or event.error
                    raise event.error
                if event.wave.kind == "model":
                    self._model_batch(event.batch)
                else:
                    self._judge_batch(event.batch)
                self._write_cannot_judge()
        except BaseException as e:
            # An early stop ends the streams before Ray goes. A signal's stop must be quick
            # (`ray job stop` kills the driver 3 s after SIGTERM): a shorter wait then.
            self._close(wait=isinstance(e, Exception))
            raise
        self._close(wait=True)
        return self._stats()

    def _close(self, wait: bool) -> None:
        self.waves.stop(wait)
        self.model_progress.close()
        if self.judge_progress is not None:
            self.judge_progress.close()
        self.model.close(wait)

    def _launch(self) -> None:
        if self.to_model and self.waves.count("model") < MAX_WAVES:
            reqs, self.to_model = self.to_model, []
            self.waves.start("model", self.model.stage(len(reqs)), to_table(reqs))
        if self.to_judge and self.waves.count("judge") < MAX_WAVES:
            reqs, self.to_judge = self.to_judge, []
            used = sorted({r.endpoint for r in reqs})
            for name in set(used) - self.limiters:
                ensure_shared_limiter(self.cfg.judges[name])  # owned by the driver: one budget for the whole run
                self.limiters.add(name)
            if "judge_start" not in self.times:
                self.times["judge_start"] = time.perf_counter()
                self.log(f"judging: {len(reqs)} judgements to ask now, {self.stats['judge_reused']} reused, "
                         f"{self.stats['judge_errors']} cannot be asked; the rest as the model's answers come")
            stage = judge_stage({n: self.cfg.judges[n].model_dump() for n in used},
                                {n: self.api_keys[n] for n in used if self.api_keys[n] is not None},
                                self.cfg.judge_stream, len(reqs), {"run": self.run_id, "model": self.cfg.model.name})
            self.waves.start("judge", stage, to_table(reqs))

    def _model_batch(self, batch: pa.Table) -> None:
        now = time.perf_counter()
        self.times.setdefault("first_row", now)
        self.times["last_row"] = now
        self.store.write_part(batch)
        self.model_progress.update(batch)
        self._metrics("model").update(batch, self.model_progress.rate())
        self.stats["rows"] += batch.num_rows
        self.stats["rows_turn"] += sum(t > 1 for t in batch.column("turn").to_pylist())
        self.served.update(w for w in zip(batch.column("node_id").to_pylist(), batch.column("replica").to_pylist())
                           if w[1] is not None)
        if not self.judged:
            return
        for r in batch.select(["key", "dataset", "row_id", "prediction", "error"]).to_pylist():
            if r["dataset"] in self.judged:
                self.answers[r["key"]] = {"prediction": r["prediction"], "error": r["error"]}
                self._advance(r["dataset"], self.rows[r["dataset"]][r["row_id"]])

    def _judge_batch(self, batch: pa.Table) -> None:
        self.times["judge_end"] = time.perf_counter()
        self.jstore.write_part(batch)
        self.judge_progress.update(batch)
        self._metrics("judge").update(batch, self.judge_progress.rate())
        self.stats["judged"] += batch.num_rows
        self.stats["judge_errors"] += batch.num_rows - batch.column("error").null_count

    def _metrics(self, stream: str) -> StreamMetrics:
        if stream not in self.metrics:
            self.metrics[stream] = StreamMetrics(stream, self.run_id, self.cfg.model.name)
        return self.metrics[stream]

    def _write_cannot_judge(self) -> None:
        if self.cannot_judge:
            reqs, self.cannot_judge = self.cannot_judge, []
            table = error_rows([r for r, _ in reqs], [why for _, why in reqs])
            self.jstore.write_part(table)
            self.stats["judge_errors"] += len(reqs)
            self.judge_progress.update(table)

    def _stats(self) -> dict:
        s = dict(self.stats)
        m, t = self.model, self.times
        if m.app is not None:
            end = t.get("last_row", time.perf_counter())
            ready = (m.ready.at if m.ready is not None else None) or end
            s.update(serve_app=m.app, ready_s=ready - m.t0, first_batch_s=t.get("first_row", end) - m.t0,
                     wall_s=end - m.t0, rows_per_s=s.get("rows", 0) / max(end - ready, 1e-9))
        if self.judged:
            s.setdefault("judged", 0)
            s.setdefault("judge_errors", 0)
            if "judge_start" in t:
                s["judge_wall_s"] = t.get("judge_end", t["judge_start"]) - t["judge_start"]
        return s
