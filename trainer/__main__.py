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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorarec.trainer")
    p.add_argument("--config", required=True, help="the resolved config.yaml in the run directory")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = p.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        from lorarec.trainer.recipe import recipe_main

        recipe_main(cfg, Path(args.config).resolve().parent, args.resume)
    except LorarecError as exc:
        print(f"lorarec: error: [rank {rank}] {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
