"""File-based service discovery of a run's ``/metrics`` endpoints.

Rank 0 gathers every rank's endpoint at start-up and records them in
``RUN_DIR/.endpoints/ranks.json`` (removed when the ranks finish). The launcher
(``lorarec train``) runs a :class:`TargetsWriter` that merges those with the graph shards'
endpoints (asked of the actors, so a restarted shard's new port is picked up) into
``RUN_DIR/prometheus_targets.json``, Prometheus's ``file_sd`` format, rewritten atomically
whenever it changes and emptied (``[]``) when the run ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from lorarec.core.io import write_json_atomic
from lorarec.monitoring.exporter import Endpoint

TARGETS_FILE = "prometheus_targets.json"
RANKS_FILE = Path(".endpoints") / "ranks.json"

log = logging.getLogger(__name__)


def file_sd(endpoints: list[Endpoint]) -> list[dict]:
    """One target group per endpoint, its labels attached (they also label ``up``)."""
    return [{"targets": [e.target], "labels": dict(e.labels)} for e in endpoints]


def write_targets(run_dir: Path, endpoints: list[Endpoint]) -> None:
    write_json_atomic(Path(run_dir) / TARGETS_FILE, file_sd(endpoints))


def read_targets(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / TARGETS_FILE).read_text())


def write_rank_endpoints(run_dir: Path, endpoints: list[Endpoint]) -> None:
    path = Path(run_dir) / RANKS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, [e.to_json() for e in endpoints])


def read_rank_endpoints(run_dir: Path) -> list[Endpoint]:
    path = Path(run_dir) / RANKS_FILE
    if not path.is_file():
        return []
    return [Endpoint.from_json(x) for x in json.loads(path.read_text())]


def clear_rank_endpoints(run_dir: Path) -> None:
    (Path(run_dir) / RANKS_FILE).unlink(missing_ok=True)


class TargetsWriter:
    """Keeps ``RUN_DIR/prometheus_targets.json`` equal to the run's live endpoints.

    ``shard_endpoints`` returns each shard's endpoint, or ``None`` for a shard that did not
    answer (restarting): its last known endpoint stays listed, so Prometheus shows it down
    until the new one is announced."""

    def __init__(
        self,
        run_dir: Path,
        shard_endpoints: Callable[[], list[Endpoint | None]] | None = None,
        interval: float = 1.0,
    ):
        self.run_dir = Path(run_dir)
        self.shard_endpoints = shard_endpoints
        self.interval = interval
        self._shards: dict[int, Endpoint] = {}
        self._written: list[dict] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prometheus-targets", daemon=True)

    def start(self) -> TargetsWriter:
        clear_rank_endpoints(self.run_dir)  # a crashed earlier run's ranks are gone
        self.update()
        self._thread.start()
        return self

    def update(self) -> list[dict]:
        if self.shard_endpoints is not None:
            for k, e in enumerate(self.shard_endpoints()):
                if e is not None:
                    self._shards[k] = e
        endpoints = read_rank_endpoints(self.run_dir) + [
            self._shards[k] for k in sorted(self._shards)
        ]
        groups = file_sd(endpoints)
        if groups != self._written:
            write_targets(self.run_dir, endpoints)
            self._written = groups
        return groups

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.update()
            except Exception as exc:  # keep watching: the next round may succeed
                log.warning("updating %s failed: %s", self.run_dir / TARGETS_FILE, exc)

    def stop(self) -> None:
        """Stop watching and list no endpoints (the run's processes are gone)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        write_targets(self.run_dir, [])
