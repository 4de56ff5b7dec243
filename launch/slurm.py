"""``lorarec train CONFIG --emit-slurm FILE``: an sbatch script for a run on several nodes.

The script asks Slurm for ``launch.nodes`` whole nodes with ``launch.ranks_per_node`` GPUs
each. At run time it writes a DeepSpeed hostfile from the allocation's node list, starts a
Ray cluster and the graph service when the run's adapter reads one, then one ``lorarec train
--no-ssh`` per node, and stops what it started when it exits. Paths (working directory,
Python environment, run directory) are fixed when the script is written.

The script's run-time helpers are this module's entry point::

    python -m lorarec.launch.slurm hostfile --nodelist NODELIST --slots N --out PATH
    python -m lorarec.launch.slurm wait-ray --address HOST:PORT --nodes N [--timeout S]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lorarec.core.config import DEFAULT_MASTER_PORT, RunConfig, write_config
from lorarec.core.errors import LorarecError, UsageError
from lorarec.core.io import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from lorarec.data.prepared import PreparedData

HOST_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
SCRIPT_MARK = "# `lorarec train --emit-slurm`."
"""In every script lorarec writes: an existing file without it is not replaced."""
MAX_HOSTS = 100_000
"""More hosts than this in one node list is taken for a typo (``n[1-1000000]``)."""
WAIT_RAY_TIMEOUT = 600
"""Seconds the script waits for the Ray nodes to join."""
SBATCH_UNSAFE = re.compile(r"[\s\"'%\\]")


# --------------------------------------------------------------------------- node lists


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list (``gpu[001-003,007],cpu7``, ``r[1-2]n[01-02]``) into host
    names, in Slurm's order.

    Items are separated by commas outside brackets; a bracket group holds ranges ``lo-hi`` and
    single numbers, which keep their zero padding; several groups in one name expand to every
    combination, the first group varying slowest. Raises :class:`UsageError` naming the
    problem and the list for malformed input and for a host listed twice."""
    text = nodelist.strip()
    if not text:
        raise UsageError("node list is empty")
    hosts: list[str] = []
    seen: set[str] = set()
    for item in _split_items(text):
        for host in _expand_item(item, text):
            if host in seen:
                raise UsageError(f"node list {text!r}: host {host} listed twice")
            seen.add(host)
            hosts.append(host)
            if len(hosts) > MAX_HOSTS:
                raise UsageError(f"node list {text!r}: more than {MAX_HOSTS} hosts")
    return hosts


def _split_items(text: str) -> list[str]:
    """Split at the commas outside brackets, checking that brackets balance and do not nest."""
    items: list[str] = []
    start, depth = 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise UsageError(f"node list {text!r}: nested '[' at position {i}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise UsageError(f"node list {text!r}: unbalanced ']' at position {i}")
            depth = 0
        elif ch == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise UsageError(f"node list {text!r}: unbalanced '[' (no closing ']')")
    items.append(text[start:])
    for item in items:
        if not item:
            raise UsageError(f"node list {text!r}: empty host name between commas")
    return items


def _expand_item(item: str, text: str) -> list[str]:
    """The host names of one item: literal parts and bracket groups, all combinations."""
    parts = re.split(r"(\[[^\]]*\])", item)
    choices: list[list[str]] = []
    for part in parts:
        if part.startswith("["):
            choices.append(_expand_group(part[1:-1], text))
        elif part:
            choices.append([part])
    if math.prod(len(c) for c in choices) > MAX_HOSTS:
        raise UsageError(f"node list {text!r}: more than {MAX_HOSTS} hosts")
    hosts = ["".join(combo) for combo in itertools.product(*choices)]
    for host in hosts:
        if not HOST_NAME.fullmatch(host):
            raise UsageError(
                f"node list {text!r}: {host!r} is not a host name (letters, digits, '.', '-', '_')"
            )
    return hosts


def _expand_group(body: str, text: str) -> list[str]:
    """The values of one bracket group: ``001-003,007`` -> ``001 002 003 007``."""
    if not body:
        raise UsageError(f"node list {text!r}: empty brackets '[]'")
    values: list[str] = []
    for piece in body.split(","):
        if not piece:
            raise UsageError(f"node list {text!r}: empty item in '[{body}]'")
        lo, sep, hi = piece.partition("-")
        if not re.fullmatch(r"\d+", lo) or (sep and not re.fullmatch(r"\d+", hi)):
            raise UsageError(
                f"node list {text!r}: {piece!r} in '[{body}]' is not a number or a range lo-hi"
            )
        if not sep:
            values.append(lo)
            continue
        if int(lo) > int(hi):
            raise UsageError(f"node list {text!r}: range {piece!r} goes down (lo > hi)")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise UsageError(f"node list {text!r}: range {piece!r} has more than {MAX_HOSTS} hosts")
        values.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return values


def write_hostfile(hosts: Sequence[str], slots: int, path: str | os.PathLike[str]) -> None:
    """Write a DeepSpeed hostfile, one ``HOST slots=N`` line per host, atomically."""
    if slots < 1:
        raise UsageError(f"--slots must be at least 1, got {slots}")
    write_text_atomic(path, "".join(f"{host} slots={slots}\n" for host in hosts))


# --------------------------------------------------------------------------- Ray


def _gcs_listening(host: str, port: int) -> bool:
    """Whether something accepts connections at the Ray head's port (``ray.init`` to an
    address where nothing listens retries without end)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def wait_ray(address: str, nodes: int, timeout: float, poll: float = 1.0) -> int:
    """Wait until the Ray cluster at ``address`` (``HOST:PORT``) has ``nodes`` live nodes;
    return how many it has. Connects with lorarec's token authentication once the head's port
    accepts connections; raises :class:`UsageError` once ``timeout`` seconds have passed."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r}: expected HOST:PORT")
    from lorarec.graph_service.service import auth_environment

    auth_environment()
    import ray

    deadline = time.monotonic() + timeout
    problem = "nothing listens there yet"
    try:
        while True:
            if not ray.is_initialized() and _gcs_listening(host, int(port)):
                try:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                except (ConnectionError, RuntimeError, TimeoutError) as exc:  # still starting
                    problem = (str(exc).strip() or repr(exc)).splitlines()[0]
            if ray.is_initialized():
                alive = sum(1 for node in ray.nodes() if node.get("Alive"))
                if alive >= nodes:
                    return alive
                problem = f"{alive} of {nodes} nodes up"
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"Ray at {address}: the cluster did not reach {nodes} nodes in {timeout:g} s "
                    f"({problem})"
                )
            time.sleep(poll)
    finally:
        if ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------- the script


def _sbatch_option(option: str, value: object) -> str:
    """One ``#SBATCH --option=value`` line; sbatch reads these lines without a shell, so
    values with spaces, quotes, ``%`` or backslashes are refused rather than half-quoted."""
    text = str(value)
    if not text or SBATCH_UNSAFE.search(text):
        raise UsageError(
            f"--emit-slurm: {option} {text!r} cannot go on an #SBATCH line (no spaces, quotes, "
            "'%' or backslashes)"
        )
    return f"#SBATCH {option}={text}"


def _graph_serve_args(cfg: RunConfig) -> list[str]:
    """The arguments of ``lorarec graph serve`` with the settings ``lorarec train`` gives its
    embedded service (the trainers find it by its namespace: data, task and shards)."""
    g, m = cfg.graph_service, cfg.monitoring
    args = [
        "graph",
        "serve",
        str(Path(cfg.data.dir).resolve()),
        "--task",
        cfg.data.prepared_task,
        "--shards",
        str(g.shards),
        "--cpus-per-shard",
        f"{g.cpus_per_shard:g}",
        f"--max-restarts={g.max_restarts}",
        "--job",
        cfg.job,
    ]
    if g.partitions:
        args += ["--partitions", str(Path(g.partitions).resolve())]
    if m.enabled:
        args += ["--metrics-host", m.host]
        if m.shard_port:
            args += ["--metrics-port", str(m.shard_port)]
    else:
        args.append("--no-metrics")
    return args


def _wrap(words: Sequence[str], first: str, rest: str, width: int = 96) -> list[str]:
    """Shell words (already quoted) on lines of at most ``width`` characters where possible:
    the first line indented by ``first``, the others by ``rest``."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append((rest if lines else first) + word)
    return lines


def _command(words: Sequence[str], indent: str = "") -> str:
    """One shell command, continued with backslashes."""
    return " \\\n".join(_wrap(words, indent, indent + "  "))


def render_sbatch(
    cfg: RunConfig,
    run_dir: Path,
    config_path: Path,
    overrides: Sequence[str],
    *,
    serve_graph: bool,
    master_port: int | None = None,
) -> str:
    """The sbatch script of a run on ``cfg.launch.nodes`` nodes with ``ranks_per_node``
    GPUs each. ``serve_graph``: the adapter reads the graph service, so the script starts a
    Ray cluster over the allocation and the service on it. The working directory and the
    Python environment are the current ones."""
    la = cfg.launch
    nodes, gpus = la.nodes, la.ranks_per_node
    port = master_port or la.master_port or DEFAULT_MASTER_PORT
    bindir = Path(sys.executable).absolute().parent
    q = shlex.quote
    unit = "GPUs" if la.accelerator != "cpu" else "ranks"
    on_head = ["srun", "--nodes=1", "--ntasks=1", '-w "$head"', "--overlap"]

    header = [
        "#!/usr/bin/env bash",
        f"# lorarec training run {cfg.name!r}: {nodes} nodes x {gpus} {unit}, written by",
        "# `lorarec train --emit-slurm`. Submit it with sbatch. The run directory must be on",
        "# storage every node shares (the hostfile, the checkpoints"
        + (" and Ray's token live there)." if serve_graph else " live there)."),
        _sbatch_option("--job-name", cfg.name),
        _sbatch_option("--nodes", nodes),
        "#SBATCH --ntasks-per-node=1",
    ]
    if la.accelerator != "cpu":
        header.append(_sbatch_option("--gpus-per-node", gpus))
    if la.slurm.cpus_per_task:
        header.append(_sbatch_option("--cpus-per-task", la.slurm.cpus_per_task))
    header.append("#SBATCH --exclusive")
    header.append(f"{_sbatch_option('--output', run_dir)}/slurm-%j.out")
    for option in ("partition", "time", "account"):
        value = getattr(la.slurm, option)
        if value:
            header.append(_sbatch_option(f"--{option}", value))
    for extra in la.slurm.extra:
        option, _, value = extra.partition("=")
        header.append(_sbatch_option(option, value) if value else f"#SBATCH {option}")

    script = "\n".join(header) + "\n"
    script += f"""
set -euo pipefail

# Fixed when this script was written: the directory the config's relative paths start from,
# the Python environment that runs lorarec, and the run directory.
cd {q(str(Path.cwd()))}
PYTHON={q(str(bindir / "python"))}
LORAREC={q(str(bindir / "lorarec"))}
RUN_DIR={q(str(run_dir))}

if [[ -z "${{SLURM_JOB_NODELIST:-}}" ]]; then
  echo "lorarec: error: SLURM_JOB_NODELIST is not set: submit this script with sbatch" >&2
  exit 2
fi

# The allocation's nodes, in Slurm's order, and the DeepSpeed hostfile ("HOST slots={gpus}") that
# every node's launcher reads. The first node is the head: the ranks meet there.
nodelist=$("$PYTHON" -m lorarec.launch.slurm hostfile --nodelist "$SLURM_JOB_NODELIST" \\
  --slots {gpus} --out "$RUN_DIR/hostfile")
mapfile -t hosts <<< "$nodelist"
if (( ${{#hosts[@]}} != {nodes} )); then
  echo "lorarec: error: the allocation has ${{#hosts[@]}} nodes ($SLURM_JOB_NODELIST), the run" \\
    "is configured for {nodes} (launch.nodes)" >&2
  exit 2
fi
head=${{hosts[0]}}

# The head's address as the other nodes reach it (the first one `hostname` gives).
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address)
head_ip=${{head_ip%%[[:space:]]*}}
"""
    if nodes > 1:
        script += """if [[ -z "$head_ip" || "$head_ip" == 127.* ]]; then
  echo "lorarec: error: $head gives '$head_ip' as its address, which the other nodes cannot" \\
    "reach; fix its /etc/hosts entry" >&2
  exit 2
fi
"""
    if serve_graph:
        ray_port = la.slurm.ray_port
        wait = [*on_head, '"$PYTHON"', "-m", "lorarec.launch.slurm", "wait-ray"]
        wait.append('--address "$ray_address"')
        timeout = f"--timeout {WAIT_RAY_TIMEOUT}"
        head_start = _command(
            [*on_head, '"$RAY"', "start", "--head", '--node-ip-address="$head_ip"']
            + [f"--port={ray_port}", "--block", "--disable-usage-stats"]
            + ["--include-dashboard=false", "&"]
        )
        graph_stop = _command(
            [*on_head, '"$LORAREC"', "graph", "stop", '--address "$ray_address"'], "    "
        )
        script += f"""
# Ray, which runs the graph service that train.adapter={cfg.train.adapter} reads, with token
# authentication: the token is created once in the run directory, readable by you only, and
# handed to every Ray process as a path (srun passes the environment on). It is never printed.
RAY={q(str(bindir / "ray"))}
ray_address="$head_ip:{ray_port}"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$RUN_DIR/.ray/auth_token"
unset RAY_AUTH_TOKEN
if [[ ! -f "$RAY_AUTH_TOKEN_PATH" ]]; then
  (
    umask 077
    mkdir -p "$RUN_DIR/.ray"
    "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' \\
      > "$RAY_AUTH_TOKEN_PATH.$$"
    mv "$RAY_AUTH_TOKEN_PATH.$$" "$RAY_AUTH_TOKEN_PATH"
  )
fi

# When the script exits, however it exits (training done or failed, an error here, scancel or
# the time limit, which send SIGTERM), stop the graph service and Ray on every node. Best
# effort: what fails is reported; the exit code stays the training's.
graph_served=0
cleanup() {{
  local rc=$?
  trap - EXIT
  set +e
  if (( graph_served )); then
{graph_stop} \\
      || echo "lorarec: warning: could not stop the graph service on $ray_address" >&2
  fi
  for host in "${{hosts[@]}}"; do
    srun --nodes=1 --ntasks=1 -w "$host" --overlap "$RAY" stop \\
      || echo "lorarec: warning: could not stop Ray on $host" >&2
  done
  exit "$rc"
}}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# The Ray head on the head node, then a Ray worker on every other node: background job steps
# that last until `ray stop` (--overlap: they share the nodes with the training). Each start
# waits until the cluster has its nodes (at most {WAIT_RAY_TIMEOUT} s).
{head_start}
{_command([*wait, "--nodes 1", timeout])}
"""
        if nodes > 1:
            worker = _command(
                ["srun", "--nodes=1", "--ntasks=1", '-w "$host"', "--overlap", '"$RAY"', "start"]
                + ['--address="$ray_address"', "--block", "--disable-usage-stats", "&"],
                "  ",
            )
            script += f"""for host in "${{hosts[@]:1}}"; do
{worker}
done
{_command([*wait, f"--nodes {nodes}", timeout])}
"""
        serve = [
            *on_head,
            '"$LORAREC"',
            *map(q, _graph_serve_args(cfg)),
            '--address "$ray_address"',
        ]
        script += f"""
# The graph service: {cfg.graph_service.shards} shard actors on the Ray cluster, detached;
# `graph serve` partitions the data (cached under $LORAREC_HOME) and returns once they are up.
graph_served=1
{_command(serve)}
"""

    train = [
        '"$LORAREC"',
        "train",
        q(str(config_path)),
        '--out "$RUN_DIR"',
        '--hostfile "$RUN_DIR/hostfile"',
        "--no-ssh",
        '--master-addr "$head_ip"',
        f"--master-port {port}",
    ]
    if serve_graph:
        train.append('--ray-address "$ray_address"')
    train += [q(o) for o in overrides]
    srun_train = _command(
        [
            "srun",
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            "--overlap",
            "bash",
            "-c",
            """'exec "$@" --node-rank "$SLURM_NODEID"'""",
            "lorarec-train",
            '"${train[@]}"',
        ]
    )
    train_lines = "\n".join(_wrap(train, "  ", "  "))
    script += f"""
# Training: one `lorarec train` per node, each starting its node's {gpus} ranks with the
# DeepSpeed launcher (--no-ssh). Its node rank is SLURM_NODEID, read inside each task (hence
# the single quotes); node 0 is the head, where the ranks meet on port {port}. A job that runs
# again (requeued or resubmitted) continues from the run's newest checkpoint. The launchers
# stop together when one fails (--kill-on-bad-exit). The script's exit code is the training's.
train=(
{train_lines}
)
if [[ -f "$RUN_DIR/checkpoints/latest" ]]; then
  train+=(--resume)
fi
"""
    if serve_graph:
        script += f'rc=0\n{srun_train} || rc=$?\nexit "$rc"\n'
    else:
        script += srun_train + "\n"
    return script


def emit_slurm(
    cfg: RunConfig,
    path: str | os.PathLike[str],
    data: PreparedData,
    overrides: Sequence[str],
    master_port: int | None = None,
) -> Path:
    """Write the run's resolved config to ``RUN_DIR/config.yaml`` and its sbatch script to
    ``path`` (atomically, mode 0755); start nothing. Returns the script's path."""
    from lorarec.trainer.conditioning import uses_service

    script = Path(path)
    if script.is_dir():
        raise UsageError(f"--emit-slurm {script}: is a directory; name the script file to write")
    if script.exists() and (
        not script.is_file()
        or SCRIPT_MARK not in script.read_bytes()[:4096].decode("utf-8", "replace")
    ):
        raise UsageError(
            f"--emit-slurm {script}: exists and is not a script lorarec wrote; choose another path"
        )
    run_dir = cfg.run_dir.resolve()
    config_path = run_dir / "config.yaml"
    text = render_sbatch(
        cfg,
        run_dir,
        config_path,
        overrides,
        serve_graph=uses_service(cfg, data),
        master_port=master_port,
    )
    write_config(cfg, config_path)
    with atomic_path(script) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o755)
    return script


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lorarec.launch.slurm",
        description="Run-time helpers of the scripts `lorarec train --emit-slurm` writes.",
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    h = sub.add_parser("hostfile", help="expand a Slurm node list into a DeepSpeed hostfile")
    h.add_argument("--nodelist", required=True, help="e.g. $SLURM_JOB_NODELIST")
    h.add_argument("--slots", type=int, required=True, help="ranks per node")
    h.add_argument("--out", required=True, help="the hostfile to write")
    w = sub.add_parser("wait-ray", help="wait until a Ray cluster has its nodes")
    w.add_argument("--address", required=True, help="HOST:PORT of the Ray head")
    w.add_argument("--nodes", type=int, required=True)
    w.add_argument("--timeout", type=float, default=WAIT_RAY_TIMEOUT, help="seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write a hostfile and print its hosts one per line, or wait for a Ray cluster. Errors
    are one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "hostfile":
            hosts = expand_nodelist(args.nodelist)
            write_hostfile(hosts, args.slots, args.out)
            print("\n".join(hosts))
        else:
            alive = wait_ray(args.address, args.nodes, args.timeout)
            print(f"Ray at {args.address}: {alive} nodes up")
    except LorarecError as exc:
        print(f"lorarec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
