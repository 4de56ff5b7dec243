"""Prometheus exporters of lorarec's processes: trainer ranks and graph shard actors.

Each process holds its own ``CollectorRegistry`` (two exporters in one process do not clash)
and serves it at ``http://HOST:PORT/metrics`` with prometheus-client's HTTP server, in a
daemon thread. HOST is 127.0.0.1 unless configured; PORT is a base port plus the rank or shard
index, or a free port; either way the endpoint is announced (``Endpoint``) so the launcher
can list it in the run's file-based discovery file.

Names follow Prometheus conventions: one ``lorarec_`` prefix, base units (``_seconds``,
``_bytes``, ratios 0..1), counters ending in ``_total``. Labels are few and bounded: ``job``,
``rank``, ``node``, ``adapter`` on a rank's series; ``job``, ``service``, ``node``, ``shard``
on a shard's; ``kind`` (a request or memory kind) where a family has several. Never user or
item ids.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from lorarec.core.errors import UsageError

# no ``*_created`` series next to every counter and histogram: they double the series count
# and no panel reads them
disable_created_metrics()

# Step times from a tiny model on a CPU (0.1 s) to a 70B backbone (minutes).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)
# One shard request: tens of microseconds to a second.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
REQUEST_KINDS = ("sample_hop", "features", "histories")
ANY_ADDRESS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Endpoint:
    """Where a process serves ``/metrics``, and its labels, as announced for discovery."""

    host: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def to_json(self) -> dict:
        return {"host": self.host, "port": self.port, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, obj: dict) -> Endpoint:
        return cls(
            str(obj["host"]), int(obj["port"]), {k: str(v) for k, v in obj["labels"].items()}
        )


def announced_host(bind_host: str) -> str:
    """The address others scrape: the bound one; when bound to all, this host's address as the
    run's other hosts reach it (:func:`lorarec.core.net.node_address`: its Ray node address,
    or the route to the rank-0 host), else the host name (which may resolve to loopback)."""
    if bind_host not in ANY_ADDRESS:
        return bind_host
    from lorarec.core.net import node_address

    return node_address() or socket.gethostname()


def process_memory_bytes() -> dict[str, int]:
    """Resident and peak resident bytes of this process."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                out["resident"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["peak_resident"] = int(line.split()[1]) * 1024
    if "peak_resident" not in out:  # kernels without VmHWM
        out["peak_resident"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def reset_peak_resident() -> bool:
    """Start this process's peak resident size (``VmHWM``) again from its current size, so that
    a later peak measures one phase; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class Exporter:
    """A registry of metrics that all carry this process's ``labels``, served on request."""

    def __init__(self, labels: dict[str, str]):
        self.labels = {k: str(v) for k, v in labels.items()}
        self.registry = CollectorRegistry()
        self.server = None
        self.endpoint: Endpoint | None = None
        memory = self._family(
            Gauge,
            "lorarec_process_memory_bytes",
            "Memory of this process (kind: resident, peak_resident), read when scraped; "
            "a rank's peak starts again when training starts",
            ("kind",),
        )
        for kind in ("resident", "peak_resident"):
            memory.labels(**self.labels, kind=kind).set_function(_memory_reader(kind))
        self.scrape_cpu = self._metric(
            Counter,
            "lorarec_exporter_scrape_cpu_seconds",
            "CPU time this process spent answering /metrics requests (the exporter's own cost)",
        )

    @property
    def scrape_cpu_seconds(self) -> float:
        return self.registry.get_sample_value(
            "lorarec_exporter_scrape_cpu_seconds_total", self.labels
        )

    def _family(self, cls, name: str, doc: str, extra: tuple[str, ...] = (), **kw):
        return cls(name, doc, labelnames=(*self.labels, *extra), registry=self.registry, **kw)

    def _metric(self, cls, name: str, doc: str, **kw):
        """A family with only this process's labels: its one child."""
        return self._family(cls, name, doc, **kw).labels(**self.labels)

    def serve(self, host: str, port: int) -> Endpoint:
        """Start serving ``/metrics`` on ``host:port`` (0: a free port) in a daemon thread;
        the endpoint."""
        app = make_wsgi_app(self.registry)

        def timed_app(environ, start_response):
            start = time.thread_time()
            try:
                return app(environ, start_response)
            finally:
                self.scrape_cpu.inc(time.thread_time() - start)

        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        try:
            server = make_server(host, port, timed_app, server_class, _QuietHandler)
        except OSError as exc:
            raise UsageError(
                f"monitoring: cannot serve /metrics on {host}:{port} ({exc.strerror}); "
                f"set monitoring.port/monitoring.host, or 0 for a free port"
            ) from None
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self.server = server
        self.endpoint = Endpoint(announced_host(host), server.server_port, self.labels)
        return self.endpoint

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # no access-log line per scrape on stderr
        return


def _memory_reader(kind: str) -> Callable[[], float]:
    return lambda: float(process_memory_bytes()[kind])


class TrainerMetrics(Exporter):
    """The series of one trainer rank, updated once per optimizer step."""

    def __init__(self, job: str, rank: int, node: str, adapter: str):
        super().__init__({"job": job, "rank": str(rank), "node": node, "adapter": adapter})
        m = self._metric
        self.tokens = m(Counter, "lorarec_train_tokens", "Tokens (without padding) trained on")
        self.samples = m(Counter, "lorarec_train_samples", "Samples trained on")
        self.steps = m(Counter, "lorarec_train_optimizer_steps", "Optimizer steps taken")
        self.step_seconds = m(
            Histogram,
            "lorarec_train_step_duration_seconds",
            "Wall time of an optimizer step, from the end of the previous one (data wait included)",
            buckets=STEP_BUCKETS,
        )
        self.data_wait = m(
            Counter,
            "lorarec_train_data_wait_seconds",
            "Time the step waited for its batches (tokens, neighbourhoods, histories)",
        )
        self.build_seconds = m(
            Counter,
            "lorarec_train_batch_build_seconds",
            "Time spent building batches, mostly hidden by prefetch",
        )
        self.loss = m(
            Gauge, "lorarec_train_loss", "Loss of the last step (answer tokens, all ranks)"
        )
        self.lr = m(Gauge, "lorarec_train_learning_rate", "Learning rate of the last step")
        self.grad_norm = m(
            Gauge, "lorarec_train_grad_norm", "Global gradient norm of the last step"
        )
        self.mfu = m(
            Gauge,
            "lorarec_train_mfu_ratio",
            "Model FLOPs utilisation of the last step: model FLOP/s over this rank's measured "
            "matmul peak",
        )
        self.global_step = m(
            Gauge, "lorarec_train_global_step", "Optimizer steps of the run so far"
        )
        self.total_steps = m(
            Gauge, "lorarec_train_planned_steps", "Optimizer steps the run will take"
        )
        self.retries = m(
            Counter,
            "lorarec_train_graph_retries",
            "Requests to the graph service this rank repeated after a shard failed",
        )
        self.checkpoint_seconds = m(
            Histogram,
            "lorarec_train_checkpoint_duration_seconds",
            "Wall time of saving a checkpoint",
            buckets=CHECKPOINT_BUCKETS,
        )
        self._device = None
        self._retries_seen = 0

    def observe_step(self, record: dict, tokens: float, samples: int) -> None:
        """One step of ``record`` (the trainer's log line); ``tokens`` and ``samples`` are
        this rank's own."""
        self.tokens.inc(tokens)
        self.samples.inc(samples)
        self.steps.inc()
        self.step_seconds.observe(record["step_seconds"])
        self.data_wait.inc(record["data_wait_seconds"])
        self.build_seconds.inc(record["batch_build_seconds"])
        self.loss.set(record["loss"])
        self.lr.set(record["lr"])
        if record["grad_norm"] is not None:
            self.grad_norm.set(record["grad_norm"])
        self.mfu.set(record["mfu"])
        self.global_step.set(record["step"])
        if record["graph_retries"] > self._retries_seen:
            self.retries.inc(record["graph_retries"] - self._retries_seen)
            self._retries_seen = record["graph_retries"]
        if "device_bytes" in record:
            if self._device is None:
                self._device = self._family(
                    Gauge,
                    "lorarec_device_memory_bytes",
                    "Accelerator memory of this rank (kind: peak_allocated)",
                    ("kind",),
                )
            self._device.labels(**self.labels, kind="peak_allocated").set(record["device_bytes"])


class ShardMetrics(Exporter):
    """The series of one graph shard: requests by kind, latency, sampled edges, restarts."""

    def __init__(self, job: str, service: str, node: str, shard: int):
        super().__init__({"job": job, "service": service, "node": node, "shard": str(shard)})
        requests = self._family(
            Counter, "lorarec_graph_requests", "Requests answered (kind: request type)", ("kind",)
        )
        errors = self._family(
            Counter,
            "lorarec_graph_request_errors",
            "Requests that failed (bad input or an error in the shard)",
            ("kind",),
        )
        latency = self._family(
            Histogram,
            "lorarec_graph_request_duration_seconds",
            "Time a shard spent answering a request",
            ("kind",),
            buckets=REQUEST_BUCKETS,
        )
        # every kind is exported from the start, so rates and error counts read 0, not absent
        self._requests = {k: requests.labels(**self.labels, kind=k) for k in REQUEST_KINDS}
        self._errors = {k: errors.labels(**self.labels, kind=k) for k in REQUEST_KINDS}
        self._latency = {k: latency.labels(**self.labels, kind=k) for k in REQUEST_KINDS}
        self.sampled_edges = self._metric(
            Counter, "lorarec_graph_sampled_edges", "Neighbour edges drawn by this shard"
        )
        self.restarts = self._metric(
            Gauge, "lorarec_graph_shard_restarts", "Times Ray has restarted this shard's actor"
        )
        self.mapped = self._metric(
            Gauge, "lorarec_graph_mapped_bytes", "Bytes of partition files this shard maps"
        )

    def totals(self) -> dict:
        """Requests and errors by kind (kinds with none left out), sampled edges and the
        seconds spent answering, read back from the series."""
        get = self.registry.get_sample_value

        def by_kind(name: str) -> dict[str, int]:
            values = {k: get(name, {**self.labels, "kind": k}) for k in REQUEST_KINDS}
            return {k: int(v) for k, v in values.items() if v}

        return {
            "requests": by_kind("lorarec_graph_requests_total"),
            "errors": by_kind("lorarec_graph_request_errors_total"),
            "sampled_edges": int(get("lorarec_graph_sampled_edges_total", self.labels)),
            "busy_seconds": sum(
                get("lorarec_graph_request_duration_seconds_sum", {**self.labels, "kind": k})
                for k in REQUEST_KINDS
            ),
        }

    @contextmanager
    def request(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        self._requests[kind].inc()
        try:
            yield
        except Exception:
            self._errors[kind].inc()
            raise
        finally:
            self._latency[kind].observe(time.perf_counter() - start)


def node_name() -> str:
    return socket.gethostname()
