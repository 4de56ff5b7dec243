"""Per-rank entry point, started by the deepspeed launcher:
``python -m lorarec.trainer --config RUN_DIR/config.yaml [--resume]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lorarec.core.config import load_config
from lorarec.core.errors import LorarecError
from lorarec.core.ranks import HEARTBEAT_ENV, STOP_FILE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorarec.trainer")
    p.add_argument("--config", required=True, help="the resolved config.yaml in the run directory")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--evaluate", action="store_true", help="only evaluate (lorarec eval --llm): no training"
    )
    p.add_argument("--adapter", default=None, help="with --evaluate: the adapter to evaluate")
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = p.parse_args(argv)
    from lorarec.launch.train import die_with_parent, watch_train_process

    die_with_parent()  # a rank never outlives its launcher
    if os.getppid() == 1:  # the launcher died before that took effect
        return 143
    watch_train_process()  # nor the `lorarec train` above the launcher
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(args.config).resolve().parent
    status = RankStatus(run_dir, rank)
    try:
        cfg = load_config(args.config)
        from lorarec.trainer.recipe import recipe_main

        recipe_main(cfg, run_dir, args.resume, evaluate=args.evaluate, adapter=args.adapter)
    except LorarecError as exc:
        status.write("failed", str(exc))
        # `lorarec train` sums the ranks' failures up in its one `lorarec: error:` line
        print(f"[rank {rank}] error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BaseException as exc:
        status.write("failed", f"{type(exc).__name__}: {exc}")
        raise
    status.write("done")
    return 0


class RankStatus:
    """``RUN_DIR/ranks/rank-<r>.json``: this rank's pid, host, node, address and state (running,
    done, failed, terminated). A rank that died without a word (SIGKILL, out of memory) stays
    ``running`` with a pid that is gone: ``lorarec train`` names it after a failed run.

    While running, a daemon thread rewrites the file every ``LORAREC_HEARTBEAT_SECONDS`` with
    its ``beat`` counter advanced: ``lorarec train``, which may run on another host (the run
    directory is on storage every node shares), takes a rank whose counter stops for
    ``launch.heartbeat_timeout`` for a lost host. The same thread ends the rank (SIGTERM) once
    ``RUN_DIR/ranks/stop`` exists: how ``lorarec train`` ends ranks it did not start itself
    (those on other hosts, started over ssh)."""

    def __init__(self, run_dir: Path, rank: int):
        import signal
        import socket
        import threading

        from lorarec.core.net import node_address

        self.path = run_dir / "ranks" / f"rank-{rank}.json"
        self.stop_path = run_dir / "ranks" / STOP_FILE
        self.base = {
            "rank": rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": int(os.environ.get("CROSS_RANK") or 0),
            "addr": node_address(),
        }
        self.beat = 0
        self.state, self.detail = "running", ""
        self.lock = threading.RLock()  # the SIGTERM handler may write while the thread does
        self.write("running")

        def terminated(signum, frame):
            self.write("terminated", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, terminated)
        interval = float(os.environ.get(HEARTBEAT_ENV) or 0)
        if interval > 0:
            threading.Thread(
                target=self._beat, args=(interval,), name="lorarec-heartbeat", daemon=True
            ).start()

    def _beat(self, interval: float) -> None:
        import signal
        import time

        while True:
            time.sleep(interval)
            if self.state != "running":  # done, failed or terminated: nothing to watch
                return
            if self.stop_path.exists():
                # the main thread may be waiting in a collective for a rank that is gone, where
                # a Python signal handler never runs: record the end here, ask politely, then
                # end the process from this thread
                self.write("terminated", "the job was ended (RUN_DIR/ranks/stop)")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(128 + signal.SIGTERM)
            with self.lock:
                if self.state != "running":
                    return
                self.beat += 1
                self.write("running")

    def write(self, state: str, detail: str = "") -> None:
        from lorarec.core.io import write_json_atomic

        with self.lock:
            self.state, self.detail = state, detail
            record = {**self.base, "state": state, "detail": detail, "beat": self.beat}
            try:
                write_json_atomic(self.path, record)
            except OSError as exc:  # a full disk: the run's own error matters more; say so
                print(
                    f"[rank {self.base['rank']}] could not record state {state}: {exc}",
                    file=sys.stderr,
                )


if __name__ == "__main__":
    sys.exit(main())
