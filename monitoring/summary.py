"""A finished job's summary as Prometheus series, pushed to a Pushgateway (optional).

The summary itself is ``RUN_DIR/job_summary.json`` (written by ``lorarec train``); this module
turns its totals, mean throughput and final values into ``lorarec_job_*`` series grouped under
the run's ``job`` label, so a dashboard can list finished runs after their endpoints are gone.
"""

from __future__ import annotations

import math
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from lorarec.core.errors import UsageError

USER_ENV = "LORAREC_PUSHGATEWAY_USER"
PASSWORD_ENV = "LORAREC_PUSHGATEWAY_PASSWORD"
"""Basic-auth credentials of ``monitoring.pushgateway`` (never in the URL or config.yaml)."""


def summary_registry(summary: dict[str, Any]) -> CollectorRegistry:
    """The summary's series (without a ``job`` label: the push's grouping key sets it)."""
    reg = CollectorRegistry()
    t = summary.get("training") or {}
    labels = {"adapter": str(t.get("adapter", ""))}

    def put(cls, name: str, doc: str, value) -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return  # a figure the run does not have (no GPU, no steps) is left out, not zeroed
        m = cls(name, doc, labelnames=tuple(labels), registry=reg).labels(**labels)
        m.inc(value) if cls is Counter else m.set(value)

    put(Counter, "lorarec_job_tokens", "Tokens trained on", t.get("tokens"))
    put(Counter, "lorarec_job_samples", "Samples trained on", t.get("samples"))
    put(Counter, "lorarec_job_optimizer_steps", "Optimizer steps", t.get("steps"))
    put(Counter, "lorarec_job_graph_retries", "Graph requests repeated", t.get("graph_retries"))
    put(Gauge, "lorarec_job_train_seconds", "Time in optimizer steps", t.get("train_seconds"))
    put(Gauge, "lorarec_job_wall_seconds", "Wall time of the job", summary.get("wall_seconds"))
    put(Gauge, "lorarec_job_tokens_per_second", "Tokens over step time", t.get("tokens_per_s"))
    put(Gauge, "lorarec_job_samples_per_second", "Samples over step time", t.get("samples_per_s"))
    put(Gauge, "lorarec_job_final_loss", "Loss of the last step", t.get("final_loss"))
    put(
        Gauge, "lorarec_job_data_wait_ratio", "Step time spent waiting", t.get("data_wait_fraction")
    )
    put(Gauge, "lorarec_job_mfu_ratio", "Mean model FLOPs utilisation", t.get("mean_mfu"))
    peaks = [x for x in t.get("peak_rss_bytes_per_rank") or [] if x is not None]
    put(
        Gauge,
        "lorarec_job_peak_memory_bytes",
        "Largest peak RSS of a rank",
        max(peaks, default=None),
    )
    put(Gauge, "lorarec_job_exit_code", "Exit code of the launcher", summary.get("exit_code"))
    put(
        Gauge,
        "lorarec_job_end_time_seconds",
        "When the job ended (Unix time)",
        summary.get("end_time"),
    )
    scores = summary.get("evaluation") or {}
    if scores:
        g = Gauge(
            "lorarec_job_eval_score",
            "Test-set metric of a method (metric: hr@1, ndcg@10, ...)",
            labelnames=(*labels, "method", "metric"),
            registry=reg,
        )
        for method, values in scores.items():
            for metric, value in values.items():
                if value is not None and math.isfinite(value):
                    g.labels(**labels, method=method, metric=metric).set(value)
    return reg


def push(url: str, job: str, summary: dict[str, Any], timeout: float = 30.0) -> None:
    """Replace the job's group on the Pushgateway at ``url`` with the summary's series."""
    handler = default_handler
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user is not None or password is not None:
        if user is None or password is None:
            raise UsageError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")

        def handler(url, method, timeout, headers, data):  # basic auth from the environment
            return basic_auth_handler(url, method, timeout, headers, data, user, password)

    try:
        push_to_gateway(
            url, job=job, registry=summary_registry(summary), timeout=timeout, handler=handler
        )
    except OSError as exc:  # URLError, HTTPError, refused, timed out
        raise UsageError(f"monitoring.pushgateway {url}: push of job {job} failed: {exc}") from None
