"""``lorarec eval``: the baselines in this process, and the LLM where it fits.

With ``--llm`` (zero-shot) or ``--adapter DIR`` the LLM is evaluated by ranks started through
the ``deepspeed`` launcher like training (``--hostfile``, ``--no-ssh --node-rank`` and the rest
work the same): every rank scores its share of the samples with the weights partitioned under
the run's DeepSpeed config (:mod:`lorarec.evaluation.sharded`), so a backbone that only fits
sharded can be evaluated. ``--in-process`` evaluates it in this one process instead, for small
models. Either way the baselines run here, on the same samples, and ``results.json`` joins them.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from lorarec.core.errors import UsageError
from lorarec.launch import train as T


def eval_command(args) -> int:
    from lorarec.core.config import write_config
    from lorarec.evaluation.protocol import run_evaluation

    cfg = T.run_config(args)
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; eval writes a directory")
    trained = [
        n for n in ("train_summary.json", "checkpoints", "adapter") if (run_dir / n).exists()
    ]
    if trained:
        raise UsageError(
            f"--out {run_dir} holds a training run ({trained[0]}); evaluate into another "
            f"directory, e.g. --out {run_dir / 'eval'}"
        )
    if args.adapter and not Path(args.adapter).is_dir():
        raise UsageError(f"--adapter {args.adapter}: not a directory")
    llm = args.llm or bool(args.adapter)  # --adapter evaluates the LLM with that adapter
    placed = [f for f, v in (("--hostfile", args.hostfile), ("--no-ssh", args.no_ssh)) if v]
    if args.in_process and placed:
        raise UsageError(f"--in-process evaluates in this process: leave out {placed[0]}")
    if placed and not llm:
        raise UsageError(f"{placed[0]} places the LLM's ranks: add --llm or --adapter")
    start = time.perf_counter()
    if llm and not args.in_process:
        rc, results = evaluate_in_ranks(cfg, args)
        if results is None:  # failed, or a node other than the first: its ranks did their share
            return rc
    else:
        run_dir.mkdir(parents=True, exist_ok=True)  # unwritable: one line now, not after
        results = run_evaluation(cfg, llm=llm, adapter=args.adapter, progress=not args.quiet)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_config(cfg, run_dir / "config.yaml")
    print(T.write_results(run_dir, results))
    print(f"\nresults: {run_dir / 'results.json'} ({results['seconds']} s)")
    return 0


def evaluate_in_ranks(cfg, args) -> tuple[int, dict | None]:
    """The LLM evaluated by ranks the launcher starts, then the baselines here: the launcher's
    exit code and, on the main node after a success, the results."""
    from lorarec.evaluation.protocol import run_evaluation
    from lorarec.launch.inputs import ensure_prepared
    from lorarec.trainer.adapter import check_adapter_dir
    from lorarec.trainer.backbone import resolve_backbone
    from lorarec.trainer.distributed import build_ds_config

    data = ensure_prepared(cfg)
    source = resolve_backbone(cfg.model)
    build_ds_config(cfg, 1)
    if args.adapter:
        check_adapter_dir(args.adapter, cfg)
        T.prepare_inputs(cfg, data, source)
    elif isinstance(source, str):
        T.prepare_inputs(cfg, data, source)
    opts = T.launch_options(args)
    opts.evaluate, opts.adapter = True, args.adapter
    again = shlex.join(["lorarec", *(getattr(args, "argv", None) or [])])
    run = T.launch_ranks(cfg, data, opts, args.ray_address, again)
    if run.rc != 0:
        why = T.failed_ranks(run.run_dir, run.rc)
        print(
            f"\nlorarec: error: evaluation failed (launcher exit code {run.rc}"
            + (f": {why}" if why else "")
            + f"); run it again with: {again}",
            file=sys.stderr,
        )
        return run.rc, None
    if not run.main_node:
        return 0, None
    ranks = json.loads((run.run_dir / "llm_results.json").read_text())
    return 0, run_evaluation(cfg, from_ranks=ranks, progress=not args.quiet)
