"""A run's figures as Ray metrics (Prometheus on every node's metrics port, the
dashboard's Metrics view, Grafana: scripts/grafana/raveval.json), tagged by run,
model, dataset and stage (model or judge): rows finished, error rows, prompt and
output tokens, request retries, rows per second.

The driver records them as batches come back, so they move while a run streams.
Where requests happen, more are recorded (raveval.http.metrics): a chat
endpoint's requests, 429s and limiter waits; each replica's rows in flight.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from raveval.http.metrics import metric as ray_metric

TAGS = ("run", "model", "dataset", "stage")


def _metric(kind: str, name: str, description: str):
    return ray_metric(kind, name, description, TAGS)


class StreamMetrics:
    def __init__(self, stage: str, run_id: str, model: str):
        self.tags = {"run": run_id, "model": model, "stage": stage}
        self.rows = _metric("Counter", "raveval_rows", "Rows finished (results written)")
        self.errors = _metric("Counter", "raveval_error_rows", "Rows that ended as error rows")
        self.prompt_tokens = _metric("Counter", "raveval_prompt_tokens", "Prompt tokens of finished rows")
        self.output_tokens = _metric("Counter", "raveval_output_tokens", "Generated tokens of finished rows")
        self.retries = _metric("Counter", "raveval_request_retries", "HTTP retries of judge requests")
        self.rate = _metric("Gauge", "raveval_rows_per_second", "Rows per second since the stream's first batch")

    def update(self, batch: pa.Table, rate: Optional[float]) -> None:
        """Count a finished batch; `rate`: the stream's rows/s (Progress.rate), when known."""
        if self.rows is None:  # Ray is not running here: nothing to record
            return
        for dataset in pc.unique(batch.column("dataset")).to_pylist():
            part = batch.filter(pc.equal(batch.column("dataset"), dataset))
            tags = {**self.tags, "dataset": dataset}
            self.rows.inc(part.num_rows, tags=tags)
            bad = part.num_rows - part.column("error").null_count
            if bad:
                self.errors.inc(bad, tags=tags)
            for column, metric in (("prompt_tokens", self.prompt_tokens), ("output_tokens", self.output_tokens),
                                   ("retries", self.retries)):
                if column in part.column_names:
                    total = pc.sum(part.column(column)).as_py()
                    if total:
                        metric.inc(total, tags=tags)
            if rate is not None:
                self.rate.set(rate, tags=tags)
