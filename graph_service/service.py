"""Starting, finding and stopping the graph service on a Ray cluster.

A service is N ``GraphShard`` actors named ``shard-0000..`` in the namespace
``lorarec-graph-<digest>`` (one namespace per partition: data, task and shard count), each
started with ``max_restarts`` so Ray restarts it, and the restarted actor reloads its partition.

Security: lorarec always runs Ray with token authentication (``RAY_AUTH_MODE=token``). For a
local cluster the token lives in ``$LORAREC_HOME/ray/auth_token`` (created with mode 0600 and
passed to processes as ``RAY_AUTH_TOKEN_PATH``, never by value); on a cluster, every node
needs the cluster's token (``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``).
A local cluster binds to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorarec.core.errors import UsageError

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "lorarec-graph-"
NAMESPACE_ENV = "LORAREC_GRAPH_NAMESPACE"
RAY_ADDRESS_ENV = "LORAREC_RAY_ADDRESS"


def actor_name(shard: int) -> str:
    return f"shard-{shard:04d}"


def namespace_of(data_manifest_sha256: str, task: str, num_shards: int) -> str:
    """The service's namespace: a digest of the source data, task and shard count."""
    key = json.dumps([data_manifest_sha256, task, num_shards])
    return NAMESPACE_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


def namespace_for(manifest: dict[str, Any]) -> str:
    """The namespace of a partition's service."""
    src = manifest["source"]
    return namespace_of(src["manifest_sha256"], src["task"], manifest["num_shards"])


# --------------------------------------------------------------------------- Ray connection


def check_token_file(path: Path) -> None:
    """A Ray token file must be the user's own and readable by nobody else (mode 0600)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UsageError(f"{path}: Ray token file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: Ray token file is not a regular file")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UsageError(
            f"{path}: Ray token file has mode {stat.S_IMODE(st.st_mode):o} (owner uid "
            f"{st.st_uid}); it must be yours with mode 600: chmod 600 {path}, or remove it to "
            "make a new one"
        )


def auth_environment() -> dict[str, str]:
    """Token authentication for every Ray process lorarec starts or connects: set in this
    process and returned, so launched processes get the same (the path, never the token)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        raise UsageError(
            f"RAY_AUTH_MODE={mode}: lorarec runs Ray with token authentication only; unset it "
            "or set it to 'token'"
        )
    env = {"RAY_AUTH_MODE": "token"}
    if not any(k in os.environ for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        from lorarec.core.assets import lorarec_home

        path = lorarec_home() / "ray" / "auth_token"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        check_token_file(path)
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    elif "RAY_AUTH_TOKEN_PATH" in os.environ:
        if Path(os.environ["RAY_AUTH_TOKEN_PATH"]).exists():  # (one that is not there yet:
            check_token_file(Path(os.environ["RAY_AUTH_TOKEN_PATH"]))  # Ray names it)
        env["RAY_AUTH_TOKEN_PATH"] = os.environ["RAY_AUTH_TOKEN_PATH"]
    changed = any(os.environ.get(k) != v for k, v in env.items())
    os.environ.update(env)
    if changed and "ray" in sys.modules:
        # Ray read its settings when it was imported: refresh them, as ray.init does when it
        # turns token mode on itself.
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    return env


def connect(address: str | None = None, namespace: str | None = None, num_cpus: int | None = None):
    """``ray.init``: to the cluster at ``address`` (``auto`` for the local one), or a new local
    instance on 127.0.0.1 owned by this process when ``address`` is None."""
    auth_environment()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs: dict[str, Any] = {
        "namespace": namespace,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address is None:
        ctx = ray.init(
            address="local",  # a new instance, never a cluster `ray start` left running
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **kwargs,
        )
    else:
        try:
            ctx = ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise UsageError(f"cannot connect to Ray at {address}: {e}") from None
    return ctx


def gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def start_local_head(num_cpus: int | None = None) -> str:
    """``ray start --head`` on 127.0.0.1 (a cluster that outlives this process); its address."""
    auth_environment()
    exe = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    cmd = [
        exe,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--port=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus or os.cpu_count()}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise UsageError(f"`ray start --head` failed: {out.stderr.strip().splitlines()[-1:]}")
    for line in out.stdout.splitlines():
        if "ray start --address=" in line:
            return line.split("--address=", 1)[1].strip().strip("'\"")
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file():
        return current.read_text().strip()
    raise UsageError("`ray start --head` did not report the cluster's address")


def session_name() -> str:
    """The connected cluster's session (``session_<date>_<pid>``), which every process of that
    cluster carries on its command line."""
    import ray

    return ray._private.worker.global_worker.node.session_name


def stop_session(session: str, timeout: float = 3.0) -> int:
    """Stop the processes of one local Ray cluster (not ``ray stop``, which ends every Ray on
    the machine): SIGTERM, then SIGKILL what is left after ``timeout``. Returns how many."""
    import signal

    def pids() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                    state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if session.encode() in cmd and state != "Z" and int(entry) != os.getpid():
                    found.append(int(entry))
        return found

    first = pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pids():
            break
    return len(first)


# --------------------------------------------------------------------------- the service


@dataclass
class ServiceOptions:
    cpus_per_shard: float = 0.25
    max_restarts: int = -1  # -1: restart without limit
    verify: bool = True
    metrics_host: str | None = "127.0.0.1"
    """Address the shards serve ``/metrics`` on (None: no endpoint)."""
    metrics_port: int = 0
    """Base port (shard k: ``metrics_port + k``); 0 picks free ports."""
    job: str | None = None
    """``job`` label of the shards' series (default: the service's namespace)."""


@dataclass
class Service:
    """A started service: its namespace and the actor handles. A non-detached service lives as
    long as this object holds the handles (and the process that started it runs)."""

    namespace: str
    handles: list


def start(partition_dir: Path, opts: ServiceOptions, detached: bool) -> Service:
    """Start (or find running) the shard actors of a partition on the connected cluster and
    wait until each has loaded."""
    import ray

    from lorarec.graph_service.partition import read_manifest
    from lorarec.graph_service.shard import actor_class

    manifest = read_manifest(partition_dir)
    namespace = namespace_for(manifest)
    cls = actor_class()

    def metrics(k: int) -> dict | None:
        if opts.metrics_host is None:
            return None
        return {
            "host": opts.metrics_host,
            "port": opts.metrics_port + k if opts.metrics_port else 0,
            "job": opts.job or namespace,
            "service": namespace,
        }

    handles = []
    for k in range(manifest["num_shards"]):
        handles.append(
            cls.options(
                name=actor_name(k),
                namespace=namespace,
                lifetime="detached" if detached else None,
                get_if_exists=True,
                max_restarts=opts.max_restarts,
                max_task_retries=0,  # the client retries, with backoff
                num_cpus=opts.cpus_per_shard,
                # one shard per node before a second on any (several nodes share the load,
                # and a lost node takes as few shards with it as it can)
                scheduling_strategy="SPREAD",
            ).remote(str(Path(partition_dir).resolve()), k, opts.verify, metrics(k))
        )
    try:
        ray.get([h.ready.remote() for h in handles])
    except ray.exceptions.RayActorError as e:
        raise UsageError(f"graph shard actors of {partition_dir} failed to start: {e}") from None
    return Service(namespace, handles)


def shard_handles(namespace: str) -> list:
    """Handles of a running service's shards, in shard order (UsageError when none runs)."""
    import ray

    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and a["name"].startswith("shard-")
    )
    if not names:
        raise UsageError(
            f"no graph service in Ray namespace {namespace}; run `lorarec graph serve`"
        )
    return [ray.get_actor(n, namespace=namespace) for n in names]


def services() -> dict[str, int]:
    """Namespace -> number of shard actors, for every lorarec graph service on the cluster."""
    import ray

    found: dict[str, int] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"].startswith(NAMESPACE_PREFIX) and a["name"].startswith("shard-"):
            found[a["namespace"]] = found.get(a["namespace"], 0) + 1
    return found


def restarts(namespace: str) -> dict[str, int]:
    """Restart count of each shard actor, from the GCS actor table (Ray's public state API
    needs the dashboard, which lorarec does not start)."""
    from lorarec.graph_service.shard import actor_restarts

    return {
        actor_name(k): actor_restarts(h._actor_id.hex())
        for k, h in enumerate(shard_handles(namespace))
    }


def metrics_endpoints(namespace: str, timeout: float = 2.0) -> list:
    """Each shard's ``/metrics`` endpoint (``Endpoint``), in shard order; ``None`` for a shard
    that does not answer within ``timeout`` (restarting) or serves none."""
    import ray

    from lorarec.monitoring.exporter import Endpoint

    refs = [h.metrics_endpoint.remote() for h in shard_handles(namespace)]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    done = {r.hex() for r in ready}
    out = []
    for ref in refs:
        found = None
        if ref.hex() in done:
            try:
                found = ray.get(ref)
            except ray.exceptions.RayError:
                found = None  # died while answering; asked again next round
        out.append(None if found is None else Endpoint.from_json(found))
    return out


def stop(namespace: str) -> int:
    """Kill a service's actors (no restart); the number killed."""
    import ray

    handles = shard_handles(namespace)
    for h in handles:
        ray.kill(h, no_restart=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and services().get(namespace):
        time.sleep(0.1)
    return len(handles)
