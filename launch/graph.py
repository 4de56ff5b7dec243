"""``lorarec graph serve|status|stop``: the graph service as a long-running part of a cluster.

``serve`` partitions a prepared task (cached under ``$LORAREC_HOME/partitions``), starts the
shard actors detached on the Ray cluster at ``--address`` and returns. Without ``--address``
it uses the local Ray that an earlier ``serve`` started, or starts one (``ray start --head`` on
127.0.0.1) that outlives the command; ``stop`` ends that one again once no service is left.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorarec.core.errors import UsageError


def _head_file() -> Path:
    from lorarec.core.assets import lorarec_home

    return lorarec_home() / "ray" / "head.json"


def _head_record() -> dict[str, Any] | None:
    """The local Ray head an earlier ``serve`` started (``head.json``), or None."""
    f = _head_file()
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_bytes().decode("utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("address"), str):
            raise ValueError("no address")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{f}: not a record of a local Ray head ({exc}); remove it (and stop any Ray it "
            "named with `ray stop`)"
        ) from None
    return record


def _local_head() -> str | None:
    record = _head_record()
    return None if record is None else record["address"]


def _head_session() -> str | None:
    record = _head_record()
    return None if record is None else record.get("session")


def _connect(address: str | None, start_local: bool = False) -> str:
    from lorarec.graph_service import service

    address = address or _local_head()
    if address is None:
        if not start_local:
            raise UsageError(
                "no Ray cluster given (--address) and no local one started by `lorarec graph serve`"
            )
        from lorarec.core.io import write_json_atomic

        address = service.start_local_head()
        service.connect(address)
        write_json_atomic(_head_file(), {"address": address, "session": service.session_name()})
        print(f"started a local Ray on {address}")
        return address
    service.connect(address)
    return address


def serve(
    data_dir: str,
    task: str,
    shards: int,
    address: str | None,
    partitions: str | None,
    cpus_per_shard: float,
    max_restarts: int,
    metrics_host: str | None = "127.0.0.1",
    metrics_port: int = 0,
    job: str | None = None,
) -> dict[str, Any]:
    from lorarec.data.prepared import PreparedData
    from lorarec.graph_service import partition, service

    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if metrics_port and not 1024 <= metrics_port <= 65535 - shards + 1:
        raise UsageError(
            f"--metrics-port must be 0 (free ports) or a base port from 1024 with {shards} "
            f"ports after it up to 65535, got {metrics_port}"
        )
    data = PreparedData.open(data_dir, task)
    part = partition.ensure(data, shards, partitions)
    address = _connect(address, start_local=True)
    opts = service.ServiceOptions(
        cpus_per_shard, max_restarts, metrics_host=metrics_host, metrics_port=metrics_port, job=job
    )
    svc = service.start(part, opts, detached=True)
    print(
        f"graph service {svc.namespace}: {shards} shards of {data.root} ({task}) on Ray "
        f"{address}; partitions {part}\n"
        f"train against it: lorarec train CONFIG --ray-address {address} "
        f"graph_service.shards={shards}"
    )
    return {"namespace": svc.namespace, "address": address, "partitions": str(part)}


def service_rows(namespace: str) -> list[dict[str, Any]]:
    """Each shard's stats with its namespace and restart count (caller connected to Ray)."""
    from lorarec.graph_service import service
    from lorarec.graph_service.client import GraphClient

    restarts = service.restarts(namespace)
    return [
        {
            "namespace": namespace,
            "restarts": restarts.get(service.actor_name(st["shard"]), 0),
            **st,
        }
        for st in GraphClient(namespace, retries=2).stats()
    ]


def status(address: str | None, as_json: bool) -> list[dict[str, Any]]:
    from lorarec.graph_service import service

    _connect(address)
    rows = [row for ns in sorted(service.services()) for row in service_rows(ns)]
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif not rows:
        print("no graph service running")
    else:
        head = f"{'namespace':<27} {'shard':>5} {'nodes':>8} {'users':>7} {'edges':>9} "
        head += f"{'mmap MB':>8} {'RSS MB':>7} {'requests':>9} {'errors':>6} {'restarts':>8}"
        print(head)
        for r in rows:
            print(
                f"{r['namespace']:<27} {r['shard']:>5} {r['nodes']:>8} {r['users']:>7} "
                f"{r['directed_entries']:>9} {r['mapped_bytes'] / 2**20:>8.1f} "
                f"{r['max_rss_bytes'] / 2**20:>7.0f} {sum(r['requests'].values()):>9} "
                f"{sum(r['errors'].values()):>6} {r['restarts']:>8}"
            )
        for r in rows:
            if r["metrics_url"]:
                print(f"metrics of {r['namespace']} shard {r['shard']}: {r['metrics_url']}")
    return rows


def stop(address: str | None, namespace: str | None) -> int:
    import ray

    from lorarec.graph_service import service

    _connect(address)
    targets = [namespace] if namespace else sorted(service.services())
    if namespace and namespace not in service.services():
        raise UsageError(f"no graph service in Ray namespace {namespace}")
    killed = sum(service.stop(ns) for ns in targets)
    print(f"stopped {len(targets)} graph service(s), {killed} shard actors")
    left = service.services()
    ray.shutdown()
    session = _head_session()
    if address is None and session and not left:
        service.stop_session(session)
        current = Path("/tmp/ray/ray_current_cluster")  # where `ray start` announced it
        if current.is_file() and current.read_text().strip() == _local_head():
            current.unlink()
        _head_file().unlink(missing_ok=True)
        print("stopped the local Ray that `lorarec graph serve` started")
    return killed
