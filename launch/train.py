"""``lorarec train``: the job, phase by phase, and the deepspeed launcher command it runs.

:func:`train_command` is the job: :func:`validate` (config, data, backbone, checkpoints),
:func:`prepare_inputs` (what the adapter reads), :func:`launch_ranks` (graph service, metrics
discovery, the launcher, stopping), :func:`evaluate_run` (the baselines next to the ranks' LLM
evaluation) and :func:`summarise` (the job summary).

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

from lorarec.core.config import DEFAULT_MASTER_PORT, RunConfig, write_config
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
    evaluate: bool = False  # the ranks only evaluate (`lorarec eval --llm`)
    adapter: str | None = None  # with evaluate: the adapter they evaluate (None: zero-shot)


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


def check_hosts_resolve(hosts, hostfile: str) -> None:
    """Over ssh the launcher reaches each host by its name: one that does not resolve is one
    error naming it, before anything starts (not in ``--dry-run``, which contacts nothing)."""
    import socket

    for host in hosts:
        try:
            socket.gethostbyname(host)
        except OSError as exc:
            raise UsageError(
                f"{hostfile}: host {host} does not resolve ({exc.strerror or exc}); the "
                "launcher reaches each host over ssh by its name"
            ) from None


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
    from lorarec.core.ranks import HEARTBEAT_ENV

    # also without a watch (timeout 0): the same thread reads RUN_DIR/ranks/stop
    env[HEARTBEAT_ENV] = f"{heartbeat_interval(cfg.launch.heartbeat_timeout or 30):g}"
    return env


def heartbeat_interval(timeout: float) -> float:
    """Seconds between a rank's heartbeats: six to a timeout, at most 10 s, at least 0.2 s."""
    return min(10.0, max(0.2, timeout / 6))


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
    if opts.evaluate:
        cmd.append("--evaluate")
        if opts.adapter:
            cmd += ["--adapter", str(Path(opts.adapter).resolve())]
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
    from lorarec.core.ranks import STOP_FILE

    stop = run_dir / "ranks" / STOP_FILE
    if stop.is_file():  # the job was ended by lorarec train's watch: why, first
        try:
            parts.append(json.loads(stop.read_text())["reason"])
        except (OSError, ValueError, KeyError) as exc:  # said, not dropped
            parts.append(f"ended by lorarec train ({stop}: unreadable reason: {exc})")
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


class RankWatch:
    """Watches the ranks' state files (``RUN_DIR/ranks``, on storage every node shares) while
    the launcher runs: a rank whose heartbeat counter has not moved for ``timeout`` seconds
    (measured by this process's clock, so the hosts' clocks need not agree) means its host is
    lost; a rank in state ``failed`` means the job cannot go on. Either way the job is ended on
    every host: ``RUN_DIR/ranks/stop`` (each rank's heartbeat thread sees it and stops the
    rank), then the local launcher tree (pdsh and its ssh sessions). The deepspeed launcher
    alone would wait for the lost host's ssh session, and the other hosts' ranks would wait in
    a collective, for as long as the network's timeouts last."""

    def __init__(self, run_dir: Path, timeout: float, hosts: list[str] | None = None):
        self.run_dir, self.timeout = run_dir, timeout
        self.hosts = hosts or []
        self.seen: dict[int, tuple[int, float]] = {}
        self.lost: set[int] = set()
        self.reason: str | None = None

    def states(self) -> list[dict]:
        import json

        out = []
        for path in sorted((self.run_dir / "ranks").glob("rank-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # being replaced
                continue
        return out

    def host_of(self, st: dict) -> str:
        """The hostfile's name of the host a rank ran on (by its address), else its node."""
        import socket

        for host in self.hosts:
            try:
                if st.get("addr") and socket.gethostbyname(host) == st["addr"]:
                    return host
            except OSError:
                continue
        return f"node {st.get('node', '?')}" + (f" ({st['addr']})" if st.get("addr") else "")

    def check(self, now: float | None = None) -> str | None:
        """Why the job must end now (None: it may go on)."""
        import time

        now = time.monotonic() if now is None else now
        stale: dict[str, list[int]] = {}
        for st in self.states():
            rank = int(st["rank"])
            if st.get("state") in ("failed", "terminated") and self.hosts:
                # on one host deepspeed's launcher ends the other ranks; across hosts, this
                detail = f" ({st['detail'][:200]})" if st.get("detail") else ""
                return f"rank {rank} {st['state']} on {self.host_of(st)}{detail}"
            if st.get("state") != "running":
                continue
            beat = int(st.get("beat", 0))
            prev = self.seen.get(rank)
            if prev is None or prev[0] != beat:
                self.seen[rank] = (beat, now)
            elif now - prev[1] > self.timeout:
                stale.setdefault(self.host_of(st), []).append(rank)
        if not stale:
            return None
        self.lost = {r for ranks in stale.values() for r in ranks}
        return "; ".join(
            f"host {host} lost (rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: no "
            f"heartbeat for {self.timeout:g} s)"
            for host, r in stale.items()
        )

    def end_job(self, reason: str) -> None:
        """Ask every rank on every host to stop (``RUN_DIR/ranks/stop``, with the reason)."""
        from lorarec.core.io import write_json_atomic
        from lorarec.core.ranks import STOP_FILE

        self.reason = reason
        write_json_atomic(self.run_dir / "ranks" / STOP_FILE, {"reason": reason})


def watch_ranks(
    proc: subprocess.Popen, watch: RankWatch, remote: bool = False, poll: float = 0.5
) -> None:
    """The body of the watcher thread: end the job (see :class:`RankWatch`) when a host is lost
    or a rank failed, waiting a few heartbeats for the ranks that are left to stop themselves
    before the launcher tree is stopped here."""
    import time

    while proc.poll() is None:
        reason = watch.check()
        if reason is None:
            time.sleep(poll)
            continue
        watch.end_job(reason)
        wait_for_ranks(proc, watch.run_dir, 3 * heartbeat_interval(watch.timeout) + 5, watch.lost)
        if proc.poll() is None:
            _stop_launcher(proc, grace=10, remote=remote)
        return


def wait_for_ranks(
    proc: subprocess.Popen, run_dir: Path, seconds: float, lost: set[int] = frozenset()
) -> None:
    """Wait up to ``seconds`` for every rank but ``lost`` to leave state ``running`` (or the
    launcher to end)."""
    import time

    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        left = {
            int(st["rank"]) for st in RankWatch(run_dir, 0).states() if st.get("state") == "running"
        }
        if left <= lost:
            return
        time.sleep(0.5)


def _stop_launcher(proc: subprocess.Popen, grace: float, remote: bool = False) -> None:
    """Stop the launcher and every process under it: SIGTERM, then SIGKILL whatever is left
    after ``grace`` seconds. ``remote`` (launched over ssh with pdsh): the ranks on the other
    hosts are not in this tree; they are asked to stop through ``RUN_DIR/ranks/stop`` (see
    ``RankStatus``), and the launcher itself is killed first with SIGKILL, a signal it cannot
    handle: on SIGTERM or SIGINT DeepSpeed's pdsh runner runs ``pkill -f "<python> -u -m
    deepspeed.launcher.launch"`` on every host, which ends every deepspeed job on those hosts
    started with the same Python, other runs too."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if remote:
        proc.kill()
        tree = children  # pdsh, its ssh sessions
    else:  # the launcher stops its ranks; the ranks record that they were stopped
        tree = [psutil.Process(proc.pid), *children] if proc.poll() is None else children
    for p in tree:
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


def run_launcher(
    cmd: list[str],
    env: dict[str, str],
    run_dir: Path,
    grace: float = 30.0,
    watch: RankWatch | None = None,
    remote: bool = False,
) -> int:
    """Run the deepspeed launcher and return its exit code. SIGTERM, SIGHUP or Ctrl-C to
    ``lorarec train`` stop the launcher and every rank first (:class:`Stopped` is raised then);
    if ``lorarec train`` itself is killed, its local ranks stop within a second and the launcher
    ends with them. With ``watch``, a lost host or a failed rank ends the job on every host
    (:class:`RankWatch`). ``remote``: the launcher reaches hosts over ssh (pdsh); stopping then
    goes through ``RUN_DIR/ranks/stop`` (:func:`_stop_launcher`)."""
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
    if watch is not None:
        import threading

        threading.Thread(
            target=watch_ranks,
            args=(proc, watch, remote),
            name="lorarec-rank-watch",
            daemon=True,
        ).start()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        return proc.wait()
    except Stopped:
        for s in previous:  # a second signal does not interrupt the stopping
            signal.signal(s, signal.SIG_IGN)
        if remote:  # the ranks on every host stop themselves, then the launcher is killed
            from lorarec.core.io import write_json_atomic
            from lorarec.core.ranks import STOP_FILE

            stop = run_dir / "ranks" / STOP_FILE
            if not stop.exists():
                write_json_atomic(stop, {"reason": "lorarec train was stopped"})
            wait_for_ranks(proc, run_dir, grace)
        _stop_launcher(proc, grace, remote)
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


# --------------------------------------------------------- `lorarec train`, phase by phase


@dataclass
class Launched:
    """What :func:`launch_ranks` leaves for the phases after it."""

    run_dir: Path
    rc: int
    seconds: float
    graph: dict | None = None
    stopped: Stopped | None = None
    main_node: bool = True


def launch_options(args) -> LaunchOptions:
    return LaunchOptions(
        resume=getattr(args, "resume", False),
        hostfile=args.hostfile,
        include=args.include,
        exclude=args.exclude,
        launcher=args.launcher,
        no_ssh=args.no_ssh,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        num_nodes=args.num_nodes,
    )


def run_config(args) -> RunConfig:
    """The run's config: the file, the ``key=value`` overrides and ``--out``."""
    from lorarec.core.config import load_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    return load_config(args.config, overrides)


def check_slurm_flags(args) -> None:
    placement = {
        "--hostfile": args.hostfile,
        "--include": args.include,
        "--exclude": args.exclude,
        "--launcher": args.launcher,
        "--num-nodes": args.num_nodes,
        "--no-ssh": args.no_ssh,
        "--node-rank": args.node_rank is not None,
        "--master-addr": args.master_addr,
        "--ray-address": args.ray_address,
        "--dry-run": args.dry_run,
    }
    given = [flag for flag, value in placement.items() if value]
    if given:
        raise UsageError(
            f"--emit-slurm writes a script that makes its own hostfile, Ray cluster and one "
            f"launcher per node: leave out {', '.join(given)}"
        )


def validate(cfg: RunConfig, args) -> tuple:
    """Everything the ranks will need, checked before any starts: the data, the backbone,
    the DeepSpeed config, and a resumed run's checkpoint (its files unchanged since the save,
    its global batch). Returns ``(data, backbone source)``."""
    from lorarec.trainer.backbone import resolve_backbone
    from lorarec.trainer.distributed import DeepSpeedStrategy, build_ds_config

    resume = getattr(args, "resume", False)
    ckpt = cfg.run_dir / "checkpoints"
    if resume and not (cfg.run_dir / "config.yaml").is_file():
        raise UsageError(f"--resume: {cfg.run_dir} holds no run to resume (no config.yaml)")
    if resume and not (ckpt / "latest").is_file():
        print(
            f"lorarec: warning: --resume: {cfg.run_dir} holds no checkpoint yet (the run stopped "
            "before its first save); training from step 0",
            file=sys.stderr,
        )
    from lorarec.launch.inputs import ensure_prepared

    data = ensure_prepared(cfg)  # prepared first where data.dir holds no prepared data
    source = resolve_backbone(cfg.model)  # also materialises tiny-random
    build_ds_config(cfg, 1)
    if not resume and (ckpt / "latest").is_file():
        raise UsageError(
            f"{cfg.run_dir} holds checkpoints of an earlier run; continue it with --resume or "
            "choose another --out"
        )
    if resume and not args.hostfile:
        tag = DeepSpeedStrategy.latest_checkpoint(ckpt)
        if tag is not None:
            from lorarec.trainer.checkpoint_manifest import verify_checkpoint
            from lorarec.trainer.recipe import check_resume_shape

            # before any rank unpickles it: the user's own files, unchanged since the save
            verify_checkpoint(ckpt, tag, complete=True)
            # another number of ranks is fine (a universal checkpoint), another global batch not
            ranks = cfg.launch.ranks_per_node * (cfg.launch.nodes if args.emit_slurm else 1)
            t = cfg.train
            check_resume_shape(
                DeepSpeedStrategy.checkpoint_state(ckpt, tag),
                ckpt / tag,
                ranks,
                t.micro_batch_size,
                t.gradient_accumulation_steps,
            )
    return data, source


def emit_slurm_script(cfg: RunConfig, data, args) -> int:
    from lorarec.launch.slurm import emit_slurm

    emit_slurm(cfg, args.emit_slurm, data, args.overrides, master_port=args.master_port)
    unit = "CPU ranks" if cfg.launch.accelerator == "cpu" else "GPUs"
    print(
        f"wrote {args.emit_slurm}: sbatch {args.emit_slurm} "
        f"({cfg.launch.nodes} nodes x {cfg.launch.ranks_per_node} {unit})"
    )
    return 0


def prepare_inputs(cfg: RunConfig, data, source) -> None:
    """What the ranks load and must not race to create: a hub backbone reachable, and the
    adapter's inputs (SASRec, collaborative embeddings, text features) trained and cached."""
    from lorarec.classic.inputs import prepare_adapter_inputs
    from lorarec.trainer.backbone import load_tokenizer

    if isinstance(source, str):
        # weights from a hub (a preset without model.weights, or a hub name): reachable, before
        # any rank starts; one error line otherwise
        load_tokenizer(cfg.model)
    prepare_adapter_inputs(cfg, data)


def launch_ranks(
    cfg: RunConfig, data, opts: LaunchOptions, ray_address: str | None, again: str
) -> Launched:
    """Start the graph service and metrics discovery, run the launcher until the ranks end,
    and stop what was started, whatever the outcome. A stop signal ends every rank and raises
    :class:`Stopped` naming ``again``, the command that continues the job."""
    from lorarec.launch import monitor as M

    if opts.hostfile and not opts.no_ssh:
        check_hosts_resolve(active_hosts(cfg, opts), opts.hostfile)
    service_env, service = graph_service_for_run(cfg, data, ray_address, bool(opts.hostfile))
    if service is not None:
        print(
            f"graph service {service.namespace}: {cfg.graph_service.shards} shards on Ray "
            f"{service_env['LORAREC_RAY_ADDRESS']}",
            flush=True,
        )
    run_dir, config_path, env = prepare_run_dir(cfg, service_env)
    (run_dir / "llm_results.json").unlink(missing_ok=True)  # an earlier launch's
    cmd = launcher_command(cfg, config_path, opts)
    print(format_command(cmd, env), flush=True)
    main_node = opts.node_rank in (None, 0)
    if opts.hostfile and cfg.monitoring.enabled and cfg.monitoring.host.startswith("127."):
        print(
            f"lorarec: warning: monitoring.host={cfg.monitoring.host}: a Prometheus on one node "
            "cannot scrape the other nodes' ranks; set monitoring.host=0.0.0.0 to serve them",
            file=sys.stderr,
        )
    targets = M.run_targets(cfg, run_dir, service) if main_node else None
    if targets is not None:
        print(
            f"metrics: endpoints listed in {run_dir / 'prometheus_targets.json'} while they are "
            f"up; watch them with `lorarec monitor {run_dir}`",
            flush=True,
        )
    import time

    start = time.perf_counter()
    out = Launched(run_dir, 0, 0.0, main_node=main_node)
    try:
        watch = None
        if cfg.launch.heartbeat_timeout > 0 and main_node:
            hosts = list(active_hosts(cfg, opts)) if opts.hostfile else None
            watch = RankWatch(run_dir, cfg.launch.heartbeat_timeout, hosts)
        remote = bool(opts.hostfile) and not opts.no_ssh and opts.launcher in (None, "pdsh")
        out.rc = run_launcher(cmd, env, run_dir, watch=watch, remote=remote)
    except Stopped as exc:  # every rank has been stopped; end the rest, then say so
        out.stopped, out.rc = exc, exc.exit_code
    finally:
        if targets is not None:
            targets.stop()
        if service is not None:
            import ray

            if main_node:
                try:
                    out.graph = M.graph_service_summary(service)
                except Exception as exc:  # the run's own outcome matters more; say so
                    print(f"lorarec: warning: no graph service summary: {exc}", file=sys.stderr)
            ray.shutdown()  # the embedded service and local Ray end with the ranks
    out.seconds = time.perf_counter() - start
    if out.stopped is not None:
        if main_node:
            M.write_job_summary(cfg, run_dir, out.rc, out.seconds, out.graph, None)
        raise Stopped(
            out.stopped.signum,
            f"{out.stopped}: the ranks, the graph service and the metrics endpoints were "
            f"stopped; continue it with: {again}",
        )
    return out


def evaluate_run(cfg: RunConfig, run: Launched) -> dict | None:
    """With ``train.evaluate``, on the main node: the baselines, here, on the samples the ranks
    evaluated the LLM on (``llm_results.json``), joined into ``results.json``."""
    if run.rc != 0 or not cfg.train.evaluate or not run.main_node:
        return None
    import json

    from lorarec.evaluation.protocol import run_evaluation

    ranks = json.loads((run.run_dir / "llm_results.json").read_text())
    results = run_evaluation(cfg, from_ranks=ranks, progress=True)
    print(write_results(run.run_dir, results))
    return results


def write_results(run_dir: Path, results: dict) -> str:
    """``results.json`` and ``results.md`` of an evaluation; returns the table."""
    from lorarec.core.io import write_json_atomic
    from lorarec.evaluation.report import results_table

    table = results_table(results)
    write_json_atomic(run_dir / "results.json", results)
    write_text_atomic(run_dir / "results.md", table + "\n")
    return table


def summarise(cfg: RunConfig, run: Launched, results: dict | None, args) -> int:
    """The job summary (main node), and the outcome in one line."""
    from lorarec.launch import monitor as M

    if run.rc != 0:
        why = failed_ranks(run.run_dir, run.rc)
        print(  # on a line of its own after the ranks' progress bars
            f"\nlorarec: error: training failed (launcher exit code {run.rc}"
            + (f": {why}" if why else "")
            + f"); continue it with: {resume_command(args, run.run_dir)}",
            file=sys.stderr,
        )
    if run.main_node:
        M.write_job_summary(cfg, run.run_dir, run.rc, run.seconds, run.graph, results)
        print(f"job summary: {run.run_dir / 'job_summary.json'}")
    if run.rc != 0:
        return run.rc
    print(f"run directory: {run.run_dir}")
    return 0


def resume_command(args, run_dir: Path) -> str:
    """The command line that continues this run from its newest checkpoint."""
    argv = list(getattr(args, "argv", None) or [])
    keep: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--dry-run"):
            continue
        if a == "--out":  # replaced by the resolved run directory below
            skip = True
            continue
        if a.startswith("--out="):
            continue
        keep.append(a)
    return shlex.join(["lorarec", *keep, "--out", str(run_dir), "--resume"])


def train_command(args) -> int:
    """``lorarec train``: validate, prepare inputs, launch the ranks (which train, export and,
    with ``train.evaluate``, evaluate the LLM where it lives), evaluate the baselines, sum up."""
    if args.emit_slurm:
        check_slurm_flags(args)
    cfg = run_config(args)
    data, source = validate(cfg, args)
    if args.emit_slurm:
        return emit_slurm_script(cfg, data, args)
    opts = launch_options(args)
    if args.dry_run:
        env = rank_environment(cfg)
        print(
            format_command(launcher_command(cfg, cfg.run_dir.resolve() / "config.yaml", opts), env)
        )
        return 0
    prepare_inputs(cfg, data, source)
    run = launch_ranks(
        cfg, data, opts, args.ray_address, resume_command(args, cfg.run_dir.resolve())
    )
    if run.rc == 0:
        print(f"trained in {run.seconds:.0f} s; adapter: {run.run_dir / 'adapter'}")
    results = evaluate_run(cfg, run)
    return summarise(cfg, run, results, args)
