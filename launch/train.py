"""``lorarec train``: build the deepspeed launcher command of a run and execute it.

On one machine (the embedded default) the launcher starts ``launch.ranks_per_node`` local
ranks. With ``--hostfile`` it passes a DeepSpeed hostfile (``--include``/``--exclude``,
``--launcher pdsh|openmpi|slurm``); with ``--no-ssh --node-rank N --master-addr A`` each node's
scheduler starts one launcher per node. Environment the ranks need goes into
``RUN_DIR/.deepspeed_env``, which the launcher exports on every node.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lorarec.core.config import RunConfig, write_config
from lorarec.core.errors import LorarecError, UsageError
from lorarec.core.io import write_text_atomic


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


def _ds_runner():
    """DeepSpeed's launcher module, whose hostfile and --include/--exclude parsing lorarec uses
    so that its checks can never disagree with the launcher's."""
    import logging

    from deepspeed.launcher import runner

    logging.getLogger("DeepSpeed").setLevel(logging.CRITICAL)  # its errors become our one line
    return runner


def validate_hostfile(path: str) -> dict[str, int]:
    """Parse a DeepSpeed hostfile (``host slots=N`` lines, ``#`` comments) with DeepSpeed's own
    parser: ``{host: slots}``, or one error naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: hostfile not found")
    try:
        lines = p.read_bytes().decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise UsageError(f"{p}:{line}: not UTF-8 text (byte {exc.start})") from None
    runner = _ds_runner()
    try:
        pool = runner._parse_hostfile(lines)
    except ValueError as exc:
        seen: set[str] = set()
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                host = next(iter(runner._parse_hostfile([line])))
            except ValueError:
                raise UsageError(f"{p}:{lineno}: expected 'HOST slots=N', got {text!r}") from None
            if host in seen:
                raise UsageError(f"{p}:{lineno}: host {host} listed twice") from None
            seen.add(host)
        raise UsageError(f"{p}: {exc}") from None  # empty: no host line
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#") and runner._parse_hostfile([line]):
            host, slots = next(iter(runner._parse_hostfile([line]).items()))
            if slots < 1:
                raise UsageError(f"{p}:{lineno}: host {host}: slots must be at least 1")
    return dict(pool)


def active_hosts(cfg: RunConfig, opts: LaunchOptions) -> dict[str, list[int]]:
    """The hosts and slots the launcher will use (hostfile, --include/--exclude, --num-nodes),
    checked against the config's ``launch.ranks_per_node`` and ``--node-rank``."""
    pool = validate_hostfile(opts.hostfile)
    if opts.include and opts.exclude:
        raise UsageError("--include and --exclude cannot be used together")
    if opts.num_nodes is not None and opts.num_nodes < 1:
        raise UsageError(f"--num-nodes must be at least 1, got {opts.num_nodes}")
    if opts.num_nodes is not None and (opts.include or opts.exclude):
        raise UsageError("--num-nodes cannot be combined with --include/--exclude (deepspeed)")
    runner = _ds_runner()
    try:
        active = runner.parse_inclusion_exclusion(pool, opts.include or "", opts.exclude or "")
    except ValueError as exc:
        flag = "--include" if opts.include else "--exclude"
        raise UsageError(
            f"{flag} {opts.include or opts.exclude}: {exc} ({opts.hostfile})"
        ) from None
    if opts.num_nodes is not None:
        if opts.num_nodes > len(active):
            raise UsageError(
                f"--num-nodes {opts.num_nodes}: {opts.hostfile} lists {len(active)} hosts"
            )
        active = dict(list(active.items())[: opts.num_nodes])
    if not active:
        raise UsageError(f"--exclude {opts.exclude}: no host of {opts.hostfile} is left")
    wanted = cfg.launch.ranks_per_node
    for host, slots in active.items():
        if len(slots) != wanted:
            raise UsageError(
                f"{opts.hostfile}: host {host} gives {len(slots)} ranks, "
                f"launch.ranks_per_node={wanted}; the hostfile's slots (after --include/--exclude) "
                f"decide the ranks: make them agree"
            )
    if opts.node_rank is not None and not 0 <= opts.node_rank < len(active):
        raise UsageError(
            f"--node-rank {opts.node_rank}: {opts.hostfile} gives {len(active)} nodes "
            f"(node ranks 0..{len(active) - 1})"
        )
    return dict(active)


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


DEFAULT_MASTER_PORT = 29500


def master_port(cfg: RunConfig, opts: LaunchOptions) -> int:
    """``--master-port``, else ``launch.master_port``; unset (0): a free port on one machine,
    29500 across nodes. On one machine a port that is taken is refused before any rank starts
    (two runs on one machine would otherwise die deep in their ranks' logs)."""
    import socket

    given = opts.master_port or cfg.launch.master_port
    if opts.master_port is not None and not 1 <= opts.master_port <= 65535:
        raise UsageError(f"--master-port {opts.master_port}: must be in 1..65535")
    if opts.hostfile:
        return given or DEFAULT_MASTER_PORT
    with socket.socket() as s:
        try:
            s.bind(("", given))
        except OSError:
            what = "--master-port" if opts.master_port else "launch.master_port"
            raise UsageError(
                f"{what} {given} is taken on this machine (another run?); choose another, or "
                "leave launch.master_port at 0 for a free one"
            ) from None
        return s.getsockname()[1]


def launcher_command(cfg: RunConfig, config_path: Path, opts: LaunchOptions) -> list[str]:
    exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    cmd = [exe]
    if opts.node_rank is not None and not opts.hostfile:
        raise UsageError("--node-rank needs --hostfile (the nodes it numbers)")
    if opts.hostfile:
        active_hosts(cfg, opts)
        cmd += ["--hostfile", opts.hostfile]
        if opts.include:
            cmd += ["--include", opts.include]
        if opts.exclude:
            cmd += ["--exclude", opts.exclude]
        if opts.launcher:
            cmd += ["--launcher", opts.launcher]
        if opts.num_nodes:
            cmd += ["--num_nodes", str(opts.num_nodes)]
    else:  # with a hostfile its slots decide (checked to equal launch.ranks_per_node above)
        cmd += ["--num_gpus", str(cfg.launch.ranks_per_node)]
    if opts.no_ssh:
        if opts.node_rank is None or not opts.hostfile:
            raise UsageError("--no-ssh needs --hostfile and --node-rank (one launcher per node)")
        cmd += ["--no_ssh", "--node_rank", str(opts.node_rank)]
    if opts.master_addr:
        cmd += ["--master_addr", opts.master_addr]
    elif not opts.hostfile:
        cmd += ["--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(master_port(cfg, opts))]
    cmd += ["--module", "lorarec.trainer", "--config", str(config_path)]
    if opts.resume:
        cmd.append("--resume")
    return cmd


def prepare_run_dir(
    cfg: RunConfig, extra_env: dict[str, str] | None = None
) -> tuple[Path, Path, dict[str, str]]:
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "ranks", ignore_errors=True)  # the states of an earlier attempt
    config_path = run_dir / "config.yaml"
    write_config(cfg, config_path)
    env = {**rank_environment(cfg), **(extra_env or {})}
    write_text_atomic(
        run_dir / ".deepspeed_env", "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
    )
    return run_dir, config_path, env


def failed_ranks(run_dir: Path, rc: int) -> str:
    """What ended a failed run, from the ranks' state files (``RUN_DIR/ranks``): the ranks that
    died without a word (their pid gone while still ``running``) or failed with an error."""
    import json
    import socket

    import psutil

    parts = []
    # deepspeed exits with a killed rank's negative return code: 256 - signal (247: SIGKILL)
    num = -rc if rc < 0 else 256 - rc if rc > 192 else rc - 128 if rc > 128 else 0
    if num in {s.value for s in signal.Signals}:
        parts.append(f"a process ended by {signal.Signals(num).name}")
    host = socket.gethostname()
    for path in sorted((run_dir / "ranks").glob("rank-*.json")):
        try:
            st = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if st.get("state") == "failed":
            parts.append(f"rank {st['rank']} failed: {st.get('detail', '')[:500]}")
        elif (
            st.get("state") == "running"
            and st.get("host") == host
            and not psutil.pid_exists(st["pid"])
        ):
            parts.append(f"rank {st['rank']} (pid {st['pid']}) died without a word")
    return "; ".join(parts)


class Stopped(LorarecError):
    """``lorarec train`` was asked to stop (SIGTERM, SIGHUP, Ctrl-C); the ranks were stopped."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


WATCH_ENV = "LORAREC_TRAIN_PROCESS"
"""``pid:start`` of the ``lorarec train`` that started the local ranks (:func:`process_start`)."""


def process_start(pid: int) -> str:
    """When process ``pid`` started, as a value that only another process could change: its start
    in clock ticks since boot (Linux), so a later process that reuses the pid differs. Not
    ``psutil``'s ``create_time()``, which adds the boot time the kernel derives from the wall clock:
    a clock adjustment moved it by a second in the middle of runs and every rank took its
    ``lorarec train`` for dead. Raises ProcessLookupError for a process that is gone."""
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None


def watch_train_process(interval: float = 1.0) -> None:
    """In a rank: SIGTERM this process once the ``lorarec train`` that started it is gone (a
    daemon thread; the deepspeed launcher in between does not pass its own death on)."""
    import threading

    value = os.environ.get(WATCH_ENV)
    if not value:
        return
    pid, started = value.split(":", 1)

    def alive() -> bool:
        try:
            return process_start(int(pid)) == started
        except ProcessLookupError:
            return False

    def watch() -> None:
        import time

        while alive():
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lorarec-watch-train", daemon=True).start()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (so a launcher, or a rank,
    never outlives a ``lorarec train`` killed with SIGKILL). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _stop_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the launcher and every process under it, then SIGKILL whatever of the tree is
    left after ``grace`` seconds."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:  # the launcher stops its ranks; the ranks record that they were stopped
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    proc.wait()


def run_launcher(cmd: list[str], env: dict[str, str], run_dir: Path, grace: float = 30.0) -> int:
    """Run the deepspeed launcher and return its exit code. SIGTERM, SIGHUP or Ctrl-C to
    ``lorarec train`` stop the launcher and every rank first (:class:`Stopped` is raised then);
    if ``lorarec train`` itself is killed, its local ranks stop within a second and the launcher
    ends with them."""
    me = os.getpid()
    full_env = {
        **os.environ,
        **env,
        "DS_ENV_FILE": str(run_dir / ".deepspeed_env"),
        # local ranks end when this process is gone, even if it was killed (SIGKILL)
        WATCH_ENV: f"{me}:{process_start(me)}",
    }

    def stop(signum, frame):
        raise Stopped(signum)

    # its own session: a signal meant for lorarec reaches the ranks only through it, in order
    # (no preexec_fn: this process has threads; the ranks watch it instead, see
    # watch_train_process, and the launcher ends once its ranks have)
    proc = subprocess.Popen(cmd, env=full_env, start_new_session=True)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        return proc.wait()
    except Stopped:
        for s in previous:  # a second signal does not interrupt the stopping
            signal.signal(s, signal.SIG_IGN)
        _stop_tree(proc, grace)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
