"""``lorarec train``: build the deepspeed launcher command of a run and execute it.

On one machine (the embedded default) the launcher starts ``launch.ranks_per_node`` local
ranks. With ``--hostfile`` it passes a DeepSpeed hostfile (``--include``/``--exclude``,
``--launcher pdsh|openmpi|slurm``); with ``--no-ssh --node-rank N --master-addr A`` each node's
scheduler starts one launcher per node. Environment the ranks need goes into
``RUN_DIR/.deepspeed_env``, which the launcher exports on every node.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lorarec.core.config import RunConfig, write_config
from lorarec.core.errors import UsageError
from lorarec.core.io import write_text_atomic

HOSTFILE_LINE = re.compile(r"^\s*([A-Za-z0-9_.:\-\[\]]+)\s+slots\s*=\s*(\d+)\s*$")


@dataclass
class LaunchOptions:
    resume: bool = False
    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    launcher: str | None = None
    no_ssh: bool = False
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    num_nodes: int | None = None


def validate_hostfile(path: str) -> list[tuple[str, int]]:
    """Parse a DeepSpeed hostfile (``host slots=N`` lines, ``#`` comments): one clear error
    naming the file and line for anything else."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: hostfile not found")
    hosts: list[tuple[str, int]] = []
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = HOSTFILE_LINE.match(text)
        if not m:
            raise UsageError(f"{p}:{lineno}: expected 'HOST slots=N', got {line.strip()!r}")
        if int(m.group(2)) < 1:
            raise UsageError(f"{p}:{lineno}: slots must be at least 1")
        if any(h == m.group(1) for h, _ in hosts):
            raise UsageError(f"{p}:{lineno}: host {m.group(1)} listed twice")
        hosts.append((m.group(1), int(m.group(2))))
    if not hosts:
        raise UsageError(f"{p}: no hosts")
    return hosts


def accelerator(cfg: RunConfig) -> str:
    if cfg.launch.accelerator != "auto":
        return cfg.launch.accelerator
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rank_environment(cfg: RunConfig) -> dict[str, str]:
    """Variables every rank needs, on every node."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if accelerator(cfg) == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // max(1, cfg.launch.ranks_per_node)))
    for key in ("LORAREC_HOME", "HF_HOME", "HF_HUB_OFFLINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def launcher_command(cfg: RunConfig, config_path: Path, opts: LaunchOptions) -> list[str]:
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    cmd = [exe]
    if opts.hostfile:
        validate_hostfile(opts.hostfile)
        cmd += ["--hostfile", opts.hostfile]
        if opts.include and opts.exclude:
            raise UsageError("--include and --exclude cannot be used together")
        if opts.include:
            cmd += ["--include", opts.include]
        if opts.exclude:
            cmd += ["--exclude", opts.exclude]
        if opts.launcher:
            cmd += ["--launcher", opts.launcher]
        if opts.num_nodes:
            cmd += ["--num_nodes", str(opts.num_nodes)]
    cmd += ["--num_gpus", str(cfg.launch.ranks_per_node)]
    if opts.no_ssh:
        if opts.node_rank is None or not opts.hostfile:
            raise UsageError("--no-ssh needs --hostfile and --node-rank (one launcher per node)")
        cmd += ["--no_ssh", "--node_rank", str(opts.node_rank)]
    if opts.master_addr:
        cmd += ["--master_addr", opts.master_addr]
    elif not opts.hostfile:
        cmd += ["--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(opts.master_port or cfg.launch.master_port)]
    cmd += ["--module", "lorarec.trainer", "--config", str(config_path)]
    if opts.resume:
        cmd.append("--resume")
    return cmd


def prepare_run_dir(
    cfg: RunConfig, extra_env: dict[str, str] | None = None
) -> tuple[Path, Path, dict[str, str]]:
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    write_config(cfg, config_path)
    env = {**rank_environment(cfg), **(extra_env or {})}
    write_text_atomic(
        run_dir / ".deepspeed_env", "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
    )
    return run_dir, config_path, env


def run_launcher(cmd: list[str], env: dict[str, str], run_dir: Path) -> int:
    full_env = {**os.environ, **env, "DS_ENV_FILE": str(run_dir / ".deepspeed_env")}
    proc = subprocess.run(cmd, env=full_env)
    return proc.returncode


def format_command(cmd: list[str], env: dict[str, str]) -> str:
    shown = {k: v for k, v in env.items() if k in ("DS_ACCELERATOR", "OMP_NUM_THREADS")}
    return " ".join([*(f"{k}={v}" for k, v in shown.items()), *map(shlex.quote, cmd)])


def graph_service_for_run(cfg: RunConfig, data, ray_address: str | None, multi_node: bool):
    """Start (embedded default) or find (``--ray-address``) the run's graph service.

    Returns the environment the ranks need to reach it and the started service (which the
    caller keeps until training ends), or ``({}, None)`` when the run does not use one."""
    from lorarec.trainer.conditioning import uses_service

    if not uses_service(cfg, data):
        return {}, None
    from lorarec.graph_service import partition, service

    g = cfg.graph_service
    env = service.auth_environment()
    if ray_address is None:
        if multi_node:
            raise UsageError(
                "a multi-node run takes the graph service from the cluster: start it with "
                "`lorarec graph serve DATA_DIR --shards N --address RAY_ADDRESS` and pass "
                "--ray-address (or set graph_service.backend=inprocess)"
            )
        part = partition.ensure(data, g.shards, g.partitions)
        service.connect(None)
        m = cfg.monitoring
        svc = service.start(
            part,
            service.ServiceOptions(
                g.cpus_per_shard,
                g.max_restarts,
                metrics_host=m.host if m.enabled else None,
                metrics_port=m.shard_port,
                job=cfg.job,
            ),
            detached=False,
        )
        address = service.gcs_address()
    else:
        namespace = service.namespace_of(data.cache_key()["manifest_sha256"], data.task, g.shards)
        service.connect(ray_address)
        found = len(service.shard_handles(namespace))
        if found != g.shards:
            raise UsageError(
                f"Ray at {ray_address}: the graph service of {data.root} ({data.task}) has "
                f"{found} shards, graph_service.shards={g.shards}"
            )
        svc = service.Service(namespace, [])
        address = ray_address
    env = {**env, service.RAY_ADDRESS_ENV: address, service.NAMESPACE_ENV: svc.namespace}
    return env, svc
