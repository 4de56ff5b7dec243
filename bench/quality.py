"""Recommendation quality of every adapter type under one training budget, on the protocols of
the methods' own papers, next to the protocol's baselines: an experiment runner.

    python bench/quality.py --protocol ctr --samples 2000 --eval 2000
    python bench/quality.py --protocol next_item --samples 1000 --eval 500 --resume
    python bench/quality.py --protocol ctr --methods lora graphlora --seeds 42 43
    python bench/quality.py --protocol ctr --resume --methods lora graphlora graphlora_b1 \
        --variant graphlora_b1 graphlora train.graphlora.b=1.0     # a tuning pilot, paired
    python bench/quality.py --readme                 # README tables from the committed JSON

Protocols (ML-100K):

* ``ctr`` (GraphLoRA, RecLoRA; TALLRec-style Yes/No): the global time split, AUC, UAUC and log
  loss on ``--eval`` test pairs; baselines trained on the labels: ``popularity`` (interaction
  count: AUC only), ``like_rate``, ``mf`` (label MF) and ``din`` (a DIN-style CTR model).
* ``next_item`` (LLaRA, iLoRA): each user's last interaction among 20 fixed candidates, HR@1,
  HR@5, NDCG@10 and MRR on ``--eval`` test users; baselines ``popularity``, ``sasrec`` (all
  training data), ``sasrec_subset`` (only the LLM's training samples: Few2Many's comparison)
  and ``lightgcn``.

Every LLM method trains through ``lorarec train`` (the deepspeed launcher, ZeRO-3) on the same
seeded subset of ``--samples`` training samples (``train.max_samples``; each seen once), with
the same steps, schedule, seed and data, and is evaluated on the same seeded ``--eval`` test
samples. Methods: ``lora``, ``lora_collab`` (plain LoRA with the collaborative embeddings as
input tokens at the user and item placeholders), ``graphlora``, ``reclora``, ``ilora``,
``graphmoe``; ``--variant NAME METHOD KEY=VALUE...`` adds a method of its own, METHOD with
those config overrides (a tuning pilot, with its own record, paired with the rest). The
baselines are evaluated once per seed by ``lorarec eval`` and restricted to the LLM's samples.

Every run directory is kept under ``--runs``: with ``--resume`` a killed benchmark continues
where it stopped (finished methods are read back, a method killed while evaluating is only
evaluated, a method with a checkpoint resumes from it),
so a long run can go on in the background across sessions. Without ``--resume`` a non-empty
runs directory is refused.

Run directories are large and stay on the machine that made them. What a finished method (or
the baselines) adds to the result is also written as a small *record*,
``bench/results/quality-<protocol>/<method>-s<seed>.json`` (``--records``): its per-sample
scores, train seconds, samples, parameters and the commits that made it, with the settings it
was made under. Records are committed, so the benchmark goes on where it stopped on another
machine or in a fresh checkout: with ``--resume`` a method whose record was made under the same
settings (protocol, config, samples, eval, seed, the method's and the command's overrides) is
read from it and not run again (``recorded``); a record made under other settings (or computed
in another precision: ``model.dtype: auto`` is bf16 only where the CPU has bf16 kernels) is not
used.

The result, ``bench/results/quality-<protocol>.json``, holds per method the metrics with 95%
bootstrap intervals (``[value, low, high]``), the paired differences to plain LoRA
(``vs_lora``) and to the collaborative-token LoRA (``vs_lora_collab``) by a paired bootstrap
over the same samples (``[difference, low, high]``, method minus reference), train seconds,
samples seen and trainable parameters; with the command, the git commit and the machine. With
several seeds a method's samples of every seed are pooled (paired by seed and sample).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROTOCOLS = {
    "ctr": {
        "overrides": ["data.task=ctr", "data.split=global"],
        "baselines": ["popularity", "like_rate", "mf", "din"],
        "metrics": ["auc", "uauc", "logloss"],
        "samples": 2000,
        "eval": 2000,
    },
    "next_item": {
        "overrides": ["data.task=next_item"],
        "baselines": ["popularity", "sasrec", "sasrec_subset", "lightgcn"],
        "metrics": ["hr@1", "hr@5", "ndcg@10", "mrr"],
        "samples": 1000,
        "eval": 500,
    },
}

METHODS = {
    "lora": ["train.adapter=lora"],
    "lora_collab": ["train.adapter=lora", "train.lora.collab_tokens=true"],
    "graphlora": ["train.adapter=graphlora"],
    "reclora": ["train.adapter=reclora"],
    "ilora": ["train.adapter=ilora"],
    "graphmoe": ["train.adapter=graphmoe"],
}
REFERENCES = ("lora", "lora_collab")


class RunnerError(Exception):
    """Bad arguments or a failed run: one line, exit code 2."""


def lorarec_cmd() -> list[str]:
    return [str(Path(sys.executable).parent / "lorarec")]


def run_logged(cmd: list[str], log_file: Path) -> None:
    """Run ``cmd`` with its output appended to ``log_file``; raise RunnerError naming the log
    if it fails. The child is killed if the runner is interrupted or terminated."""
    with open(log_file, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-1:]
        raise RunnerError(f"{cmd[1]} failed (exit {rc}; log {log_file}): {' '.join(tail)}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def budget(args, overrides: list[str]) -> dict:
    """Steps and schedule for ``--samples`` samples, each seen once, from the config's batch."""
    from lorarec.core.config import load_config

    cfg = load_config(ROOT / args.config, overrides)
    ranks = cfg.launch.ranks_per_node * max(1, cfg.launch.nodes)
    global_batch = ranks * cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps
    steps = max(1, math.ceil(args.samples / global_batch))
    return {
        "global_batch": global_batch,
        "steps": steps,
        "overrides": [
            f"train.max_samples={args.samples}",
            f"train.max_steps={steps}",
            f"train.warmup_steps={max(1, steps // 20)}",  # 5% of the steps
            f"train.checkpoint_every={max(5, steps // 8)}",
        ],
    }


def common_overrides(args, seed: int) -> list[str]:
    return [
        *PROTOCOLS[args.protocol]["overrides"],
        f"train.seed={seed}",
        f"eval.llm_limit={args.eval}",
        f"eval.bootstrap={args.bootstrap}",
        *args.overrides,
    ]


def settings(args, name: str, seed: int) -> dict:
    """What a method's (or the baselines') result depends on: a record made under other
    settings is not used."""
    return {
        "protocol": args.protocol,
        "config": args.config,
        "samples": args.samples,
        "eval": args.eval,
        "seed": seed,
        "method": args.table[name] if name in args.table else sorted(args.baselines),
        "overrides": list(args.overrides),
        # `model.dtype: auto` computes in bf16 where the CPU has bf16 kernels, else in fp32:
        # a record made on another machine in another precision is not mixed in
        "dtype": compute_dtype(args),
    }


def compute_dtype(args) -> str:
    """The precision the LLM methods compute in here (the config's ``model.dtype`` resolved)."""
    if getattr(args, "dtype", None) is None:
        from lorarec.core.config import load_config

        overrides = [*PROTOCOLS[args.protocol]["overrides"], *args.overrides]
        args.dtype = load_config(ROOT / args.config, overrides).model.dtype
    return args.dtype


def record_path(args, name: str, seed: int) -> Path:
    return Path(args.records) / f"{name}-s{seed}.json"


def read_record(args, name: str, seed: int) -> dict | None:
    """The recorded row of ``name`` at ``seed`` if it was made under the current settings."""
    path = record_path(args, name, seed)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunnerError(f"{path}: not a JSON record ({e})") from e
    want = settings(args, name, seed)
    if record.get("settings") != want:
        got = record.get("settings") or {}
        differ = sorted(k for k in want if got.get(k) != want[k])
        print(f"{path}: made under other settings ({', '.join(differ)}): not used", flush=True)
        return None
    return record["row"]


def write_record(args, name: str, seed: int, row: dict) -> None:
    from lorarec.core.io import write_json_atomic

    write_json_atomic(
        record_path(args, name, seed), {"settings": settings(args, name, seed), "row": row}
    )


def train_method(name: str, seed: int, args, sched: dict, run: Path) -> tuple[dict, str]:
    """Train and evaluate ``name`` into ``run`` (or read it back) and record it: its row and
    how it was obtained (``done``: read from its run, ``recorded``: read from its record,
    ``evaluated``: trained before, ``resumed``, ``new``)."""
    if (run / "results.json").is_file() and (run / "train_summary.json").is_file():
        row, how = read_method(run), "done"
    elif args.resume and (row := read_record(args, name, seed)) is not None:
        return row, "recorded"
    else:
        row, how = run_method(name, seed, args, sched, run)
    write_record(args, name, seed, row)
    return row, how


def run_method(name: str, seed: int, args, sched: dict, run: Path) -> tuple[dict, str]:
    evaluation = ["eval.llm_methods=[likelihood]", "eval.baselines=[]"]
    overrides = [*args.table[name], *common_overrides(args, seed), *sched["overrides"]]
    if (run / "train_summary.json").is_file() and (run / "adapter").is_dir():
        # trained and exported, killed while evaluating: evaluate the exported adapter with
        # the same settings `lorarec train` evaluates with, without training again
        eval_dir = run / "eval"
        if eval_dir.exists():
            shutil.rmtree(eval_dir)
        with open(run / "commits.txt", "a") as f:
            f.write(git_commit() + "\n")
        cmd = [
            *lorarec_cmd(),
            "eval",
            args.config,
            "--out",
            str(eval_dir),
            "--adapter",
            str(run / "adapter"),
            "--quiet",
            *overrides,
            *evaluation,
        ]
        run_logged(cmd, run.parent / f"{run.name}.log")
        tmp = run / "results.json.tmp"
        shutil.copyfile(eval_dir / "results.json", tmp)
        os.replace(tmp, run / "results.json")
        return read_method(run), "evaluated"
    how = "new"
    cmd = [
        *lorarec_cmd(),
        "train",
        args.config,
        "--out",
        str(run),
        *overrides,
        f"launch.master_port={free_port()}",  # another run may hold the default port
        "train.evaluate=true",
        *evaluation,
    ]
    if (run / "checkpoints" / "latest").is_file():
        cmd.append("--resume")
        how = "resumed"
    elif run.exists():  # killed before its first checkpoint: nothing finished to keep
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    commits = run / "commits.txt"  # every commit that trained or evaluated this run
    with open(commits, "a") as f:
        f.write(git_commit() + "\n")
    run_logged(cmd, run.parent / f"{run.name}.log")
    return read_method(run), how


def read_method(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    llm = [v for k, v in results["methods"].items() if k.startswith("llm")]
    if len(llm) != 1 or "per_sample" not in llm[0]:
        raise RunnerError(f"{run / 'results.json'}: expected one LLM entry with per-sample values")
    return {
        "entry": compact(llm[0]),
        "backbone": results.get("backbone"),
        "train_seconds": round(sum(r["step_seconds"] for r in records), 1),
        "train_samples": int(summary["samples"]),
        "steps": int(summary["steps"]),
        "trainable_parameters": int(summary["trainable_parameters"]),
        "final_loss": summary.get("final_loss"),
        "commits": _commits(run),
        "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
    }


def compact(entry: dict) -> dict:
    """``entry`` with its per-sample scores at 7 significant digits: the size a record can be
    committed at. Runs and records are scored from the same rounded values."""
    ps = {
        c: [float(f"{x:.7g}") if isinstance(x, float) else x for x in v]
        for c, v in entry["per_sample"].items()
    }
    return {**entry, "per_sample": ps}


def _commits(run: Path) -> list[str]:
    path = run / "commits.txt"
    lines = path.read_text().split() if path.is_file() else []
    return list(dict.fromkeys(lines))  # in order, once each


def baselines(seed: int, args, run: Path, keys: list[str] | None) -> tuple[dict[str, dict], str]:
    """The protocol's baselines restricted to the LLM's samples ``keys`` (all without), from
    their run, their record or a new evaluation, and recorded; with how they were obtained."""
    how = "done" if (run / "results.json").is_file() else "new"
    if how == "new" and args.resume and (row := read_record(args, "baselines", seed)) is not None:
        entries, how = row["entries"], "recorded"
        if keys is not None:
            entries = {name: restrict(e, keys) for name, e in entries.items()}
        return entries, how
    entries = evaluate_baselines(seed, args, run)
    if keys is not None:
        entries = {name: restrict(e, keys) for name, e in entries.items()}
    entries = {name: compact(e) for name, e in entries.items()}
    write_record(args, "baselines", seed, {"entries": entries, "commits": [git_commit()]})
    return entries, how


def evaluate_baselines(seed: int, args, run: Path) -> dict[str, dict]:
    """The protocol's baselines on the whole test split (``lorarec eval``), read back."""
    if not (run / "results.json").is_file():
        if run.exists():
            shutil.rmtree(run)
        run.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            *lorarec_cmd(),
            "eval",
            args.config,
            "--out",
            str(run),
            "--quiet",
            *common_overrides(args, seed),
            f"train.max_samples={args.samples}",
            f"eval.baselines=[{','.join(args.baselines)}]",
        ]
        run_logged(cmd, run.parent / f"{run.name}.log")
    results = json.loads((run / "results.json").read_text())
    return {k: v for k, v in results["methods"].items() if k in args.baselines}


def restrict(entry: dict, keys: list[str]) -> dict:
    """``entry`` with its per-sample values restricted to ``keys``, in that order."""
    ps = entry["per_sample"]
    where = {k: i for i, k in enumerate(ps["key"])}
    missing = [k for k in keys if k not in where]
    if missing:
        raise RunnerError(f"a baseline lacks {len(missing)} of the LLM's samples ({missing[0]})")
    order = [where[k] for k in keys]
    return {**entry, "per_sample": {c: [v[i] for i in order] for c, v in ps.items()}}


def pooled(entries: dict[int, dict]) -> dict:
    """One entry of every seed's samples, keyed ``seed:key`` (pairs by seed and sample)."""
    cols: dict[str, list] = {}
    for seed, e in entries.items():
        for c, v in e["per_sample"].items():
            cols.setdefault(c, []).extend([f"{seed}:{x}" for x in v] if c == "key" else v)
    first = next(iter(entries.values()))
    return {"metrics": first["metrics"], "per_sample": cols}


def metric_intervals(entry: dict, metrics: list[str], n: int) -> dict[str, list[float]]:
    from lorarec.evaluation import metrics as M
    from lorarec.evaluation.report import metric_statistic

    out = {}
    for m in metrics:
        st = metric_statistic(entry, m)
        if st is not None:
            out[m] = [round(x, 6) for x in M.bootstrap_ci(st[0], st[1], n, seed=0)]
    return out


def compare(entry: dict, ref: dict | None, metrics: list[str], n: int) -> dict | None:
    from lorarec.evaluation.report import paired_comparison

    if ref is None:
        return None
    diffs = paired_comparison(entry, ref, n, seed=0, metrics=metrics)
    return {m: [round(x, 6) for x in v] for m, v in diffs.items()}


def git_commit() -> str:
    """HEAD, with ``-dirty`` when tracked files differ from it; the benchmark's own results
    (``bench/results``, which it rewrites as it goes) do not count."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model or platform.processor()}, {os.cpu_count()} CPUs"


# ------------------------------------------------------------------ tables


def fmt(v: list | None, signed: bool = False) -> str:
    if not v:
        return ""
    s = "+.3f" if signed else ".3f"
    lo = "nan" if v[1] != v[1] else format(v[1], s)
    hi = "nan" if v[2] != v[2] else format(v[2], s)
    return f"{format(v[0], s)} [{lo}, {hi}]"


def table(result: dict) -> str:
    """The README table of one protocol's result file."""
    metrics = PROTOCOLS[result["protocol"]]["metrics"]
    from lorarec.evaluation.report import main_metric

    main = main_metric(result["protocol"])
    head = (
        f"{result['protocol']}: {result['data']}; {result['eval_samples']} test "
        f"{'pairs' if result['protocol'] == 'ctr' else 'users'}, {result['train_samples']} "
        f"training samples per LLM method; {result['backbone']}; commit {result['commit'][:12]}, "
        f"{result['machine']}; `{result['command']}`"
    )
    top = result["commit"].split("-")[0]
    other = {
        name: [c[:12] for c in r.get("commits", []) if c.split("-")[0] != top]
        for name, r in result["methods"].items()
    }
    other = {k: v for k, v in other.items() if v}
    if other:
        head += "; trained earlier at " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in other.items()
        )
    cols = [*metrics, f"{main} vs LoRA", f"{main} vs LoRA-collab", "train s", "trainable"]
    lines = [head, "", "| method | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for name, r in result["methods"].items():
        cells = [fmt(r["metrics"].get(m)) for m in metrics]
        cells += [fmt((r.get("vs_lora") or {}).get(main), True)]
        cells += [fmt((r.get("vs_lora_collab") or {}).get(main), True)]
        ts, tp = r.get("train_seconds"), r.get("trainable_parameters")
        cells += ["" if ts is None else f"{ts:.0f}", "" if tp is None else f"{tp:,}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(paths: list[Path]) -> None:
    """Replace the README block between ``<!-- quality-<protocol> -->`` markers with the table
    generated from each result file."""
    from lorarec.core.io import write_text_atomic

    readme = ROOT / "README.md"
    text = readme.read_text()
    for path in paths:
        result = json.loads(path.read_text())
        tag = f"quality-{result['protocol']}"
        pattern = re.compile(rf"(<!-- {tag} -->\n).*?(<!-- /{tag} -->)", re.S)
        if not pattern.search(text):
            raise RunnerError(f"README.md has no <!-- {tag} --> ... <!-- /{tag} --> block")
        block = table(result)
        text = pattern.sub(lambda m, b=block: m.group(1) + b + "\n" + m.group(2), text)
    write_text_atomic(readme, text)


# ------------------------------------------------------------------ main


def run(args) -> dict:
    proto = PROTOCOLS[args.protocol]
    runs = Path(args.runs)
    if runs.exists() and any(runs.iterdir()) and not args.resume:
        raise RunnerError(f"{runs} holds runs: pass --resume to continue them, or another --runs")
    runs.mkdir(parents=True, exist_ok=True)
    sched = budget(args, common_overrides(args, args.seeds[0]))
    from lorarec.evaluation.report import main_metric

    main = main_metric(args.protocol)
    start = time.perf_counter()
    per_seed: dict[str, dict[int, dict]] = {}
    info: dict[str, dict[int, dict]] = {}
    total = len(args.seeds) * (len(args.methods) + 1)
    done = 0
    for seed in args.seeds:
        for name in args.methods:
            t0 = time.perf_counter()
            row, how = train_method(name, seed, args, sched, runs / f"{name}-s{seed}")
            done += 1
            per_seed.setdefault(name, {})[seed] = row["entry"]
            info.setdefault(name, {})[seed] = row
            m = row["entry"]["metrics"].get(main, {})
            print(
                f"[{done}/{total}] {name} seed {seed}: {how}, {row['train_samples']} samples, "
                f"train {row['train_seconds']:.0f} s, {main} {m.get('value', float('nan')):.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        t0 = time.perf_counter()
        keys = next(iter(per_seed.values()))[seed]["per_sample"]["key"] if per_seed else None
        found, how = baselines(seed, args, runs / f"baselines-s{seed}", keys)
        for name, entry in found.items():
            per_seed.setdefault(name, {})[seed] = entry
        done += 1
        print(
            f"[{done}/{total}] baselines seed {seed}: {how}, {', '.join(args.baselines)} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    entries = {name: pooled(e) for name, e in per_seed.items()}
    n = args.bootstrap
    refs = {r: entries.get(r) for r in REFERENCES}
    methods = {}
    for name, entry in entries.items():
        out = {
            "metrics": metric_intervals(entry, proto["metrics"], n),
            "n": len(entry["per_sample"]["key"]),
        }
        for r in REFERENCES:
            out[f"vs_{r}"] = compare(entry, refs[r], proto["metrics"], n)
        if name in info:
            rows = list(info[name].values())
            out.update(
                train_seconds=round(sum(r["train_seconds"] for r in rows), 1),
                train_samples=sum(r["train_samples"] for r in rows),
                trainable_parameters=rows[0]["trainable_parameters"],
                final_loss=[r["final_loss"] for r in rows],
                commits=sorted({c for r in rows for c in r["commits"]}),
                runs=[r["run"] for r in rows],
            )
        else:
            out["kind"] = "baseline"
        methods[name] = out
    backbone = next((r["backbone"] for rows in info.values() for r in rows.values()), None)
    return {
        "protocol": args.protocol,
        "commit": git_commit(),
        "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]),
        "machine": machine(),
        "backbone": backbone,
        "config": args.config,
        "data": "ML-100K, "
        + ("global time split (8:1:1)" if args.protocol == "ctr" else "per-user split"),
        "seeds": args.seeds,
        "train_samples": args.samples,
        "eval_samples": args.eval,
        "steps": sched["steps"],
        "global_batch": sched["global_batch"],
        "bootstrap": n,
        "seconds": round(time.perf_counter() - start, 1),
        "methods": methods,
    }


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="ctr")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument(
        "--samples",
        type=int,
        help="training samples per method (default: 2000 for ctr, 1000 for next_item)",
    )
    p.add_argument("--eval", type=int, help="test samples (default 2000 ctr, 500 next_item)")
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(METHODS)}")
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME METHOD KEY=VALUE",
        help="an extra method NAME: METHOD with these config overrides (a tuning pilot), "
        "paired with the others; repeatable",
    )
    p.add_argument("--baselines", nargs="*", help="default: the protocol's")
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--runs", help="run directories (default runs/bench_quality/<protocol>)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --runs")
    p.add_argument("--json", help="default bench/results/quality-<protocol>.json")
    p.add_argument(
        "--records",
        help="each finished method's record (default: --json without .json, a folder)",
    )
    p.add_argument(
        "--readme",
        action="store_true",
        help="only regenerate the README tables from bench/results/quality-*.json",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = p.parse_args(argv)
    args.table = dict(METHODS)
    for v in args.variant:
        if (
            len(v) < 3
            or v[0] in args.table
            or v[1] not in METHODS
            or not all("=" in o for o in v[2:])
        ):
            p.error(
                f"--variant {' '.join(v)}: expected a new NAME, one of {', '.join(METHODS)} "
                "and at least one KEY=VALUE override"
            )
        args.table[v[0]] = [*METHODS[v[1]], *v[2:]]
    args.methods = args.methods or list(METHODS)
    unknown = [m for m in args.methods if m not in args.table]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(args.table)})")
    proto = PROTOCOLS[args.protocol]
    args.samples = args.samples or proto["samples"]
    args.eval = args.eval or proto["eval"]
    args.baselines = proto["baselines"] if args.baselines is None else args.baselines
    args.runs = args.runs or str(ROOT / "runs/bench_quality" / args.protocol)
    args.json = args.json or str(ROOT / f"bench/results/quality-{args.protocol}.json")
    args.records = args.records or str(Path(args.json).with_suffix(""))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the running child too
    try:
        if args.readme:
            update_readme(sorted((ROOT / "bench/results").glob("quality-*.json")))
            return 0
        result = run(args)
    except RunnerError as e:
        print(f"bench/quality.py: {e}", file=sys.stderr)
        return 2
    from lorarec.core.io import write_json_atomic

    print(table(result))
    write_json_atomic(Path(args.json), result)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
