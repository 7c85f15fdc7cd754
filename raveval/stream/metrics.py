"""A run's figures as Ray metrics (Prometheus on every node's metrics port, the
dashboard's Metrics view, Grafana: scripts/grafana/raveval.json), tagged by run,
model, dataset and stage (model or judge): rows finished, error rows, prompt and
output tokens, request retries, rows per second.

The driver records them as batches come back, so they move while a run streams.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

TAGS = ("run", "model", "dataset", "stage")
_made: dict[str, object] = {}  # one metric object per name and process


def _metric(kind: str, name: str, description: str):
    if name not in _made:
        from ray.util import metrics

        _made[name] = getattr(metrics, kind)(name, description=description, tag_keys=TAGS)
    return _made[name]


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
