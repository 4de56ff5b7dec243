"""Throughput benchmarks, each measured side by side in one run (before/after on the same data).

``step``: one training step (forward + backward of the answer-token loss) of the demo
configuration (SmolLM2-135M-Instruct + PEFT LoRA, rank 8 on q/v, a micro-batch of real ML-100K
training prompts), with logits over the whole sequence (before) and only from the position
before the earliest answer token (after, what the trainer does), round-robin in one process,
the fastest of ``--rounds``. Samples/s and MFU as the trainer reports them (the weight matmuls'
FLOPs, :class:`~lorarec.trainer.recipe.StepFlops`, against one core's matmul rate in the step's
dtype times the threads, :func:`~lorarec.trainer.recipe.measure_matmul_peak`).

``grouping``: ``--window`` steps of the demo's training stream (2 ranks x 2 samples) as drawn
and grouped by length (``train.group_by_length``: the same samples), every micro-batch's
forward + backward timed round-robin; a step lasts as long as its slowest rank.

``sasrec``: SASRec's training epoch on a generated sequences-format file of prefix rows, the
shape of LLaRA's and iLoRA's LastFM and Steam files (no user ids; one row per interaction,
its history the previous items, truncated). Before: every row is a sequence of its own (the
windows of a user's sequence are trained once per row: quadratic in its length); after: the
rows are rebuilt into whole sequences (:func:`lorarec.classic.sasrec.training_sequences`), a
loss at every position of each once. Both train the same model for the same epochs; the table
shows the windows, the seconds per epoch and the ratio, and the validation NDCG@10 each reached.

    python bench/throughput.py                 # the step, and SASRec on 50,000 rows, 1 epoch
    python bench/throughput.py --only step     # or grouping, sasrec; --rows 5000: quicker
    python bench/throughput.py --json PATH     # default bench/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def prefix_rows(rows: int, items: int, cap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training rows of users with 20-200 interactions (Zipf-like item popularity) as LLaRA
    writes them, and one validation row per user (its next item among 20 candidates)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    train, valid = [], []
    while len(train) < rows:
        seq = rng.choice(items, size=int(rng.integers(20, 200)), p=weights).tolist()
        for k in range(len(seq) - 1):
            hist = seq[max(0, k - cap) : k]
            train.append({"key": f"t{len(train)}", "user": -1, "history": hist, "target": seq[k]})
        cands = [seq[-1], *rng.choice(np.setdiff1d(np.arange(items), seq), 19, replace=False)]
        valid.append(
            {
                "key": f"v{len(valid)}",
                "user": -1,
                "history": seq[-1 - cap : -1],
                "target": seq[-1],
                "candidates": [int(c) for c in rng.permutation(cands)],
            }
        )
    return train[:rows], valid


def setup(args):
    """The demo configuration's model (PEFT LoRA on the fp32 backbone), tokenizer, data and
    example builder."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from lorarec.core.config import load_config
    from lorarec.launch.inputs import ensure_prepared
    from lorarec.trainer.backbone import load_backbone
    from lorarec.trainer.batching import ExampleBuilder
    from lorarec.trainer.prompts import PromptStyle

    torch.manual_seed(0)
    # the fp32 backbone whatever `model.dtype: auto` resolves to here: the "before" variants
    # are fp32 and the bf16 one is a bf16 copy (auto gave bf16 on a CPU with AVX512-BF16, and
    # every variant ran in bf16)
    cfg = load_config(ROOT / args.config, ["model.dtype=float32"])
    data = ensure_prepared(cfg)  # prepared first (fetching ML-100K) on a fresh machine
    backbone, tok = load_backbone(cfg.model)
    lora = cfg.train.lora
    model = get_peft_model(
        copy.deepcopy(backbone),
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        ),
    )
    builder = ExampleBuilder(
        tok,
        data.titles,
        data.task,
        cfg.data.history_short,
        cfg.train.max_length,
        style=PromptStyle.from_config(cfg.data),
    )
    return cfg, data, model, tok, builder


def bf16_kernels() -> bool:
    """Whether this CPU has oneDNN's bf16 matmul kernels (AVX512-BF16 or AMX): without them
    PyTorch emulates bf16 far below the fp32 rate."""
    import torch

    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def bench_step(args) -> dict:
    import torch

    from lorarec.trainer.backbone import describe_backbone
    from lorarec.trainer.batching import answer_logits_to_keep, answer_token_loss_sum, collate
    from lorarec.trainer.recipe import StepFlops, measure_matmul_peak

    cfg, data, model, tok, builder = setup(args)
    samples = data.samples("train")[: args.batch]
    batch = collate([builder.build(s) for s in samples], tok.pad_token_id)
    keep = answer_logits_to_keep(batch["labels"])
    variants = {"full logits (before)": (model, None), "answer logits (after)": (model, keep)}
    bf16 = bf16_kernels()
    if bf16:  # the trainer's model.dtype: bfloat16 (DeepSpeed keeps fp32 master weights)
        import copy

        variants["answer logits, bf16 (after)"] = (copy.deepcopy(model).to(torch.bfloat16), keep)

    def step(net, logits_to_keep) -> float:
        start = time.perf_counter()
        kw = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        logits = net(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw
        ).logits
        answer_token_loss_sum(logits.float(), batch["labels"]).backward()
        for p in net.parameters():
            p.grad = None
        return time.perf_counter() - start

    times = {name: [] for name in variants}
    for v in variants.values():  # warm-up
        step(*v)
    for _ in range(args.rounds):
        for name, v in variants.items():
            times[name].append(step(*v))
    flops = StepFlops.of(model)
    peak = measure_matmul_peak(torch.float32, torch.device("cpu"))
    peak_bf16 = measure_matmul_peak(torch.bfloat16, torch.device("cpu")) if bf16 else None
    tokens = int(batch["attention_mask"].sum())
    out = {
        "backbone": describe_backbone(cfg.model),
        "batch": args.batch,
        "tokens": tokens,
        "width": int(batch["input_ids"].shape[1]),
        "logits_kept": keep,
        "rounds": args.rounds,
        "peak_flops": peak,
        "peak_flops_bf16": peak_bf16,
        "bf16": "measured"
        if bf16
        else "not measured: this CPU has no bf16 matmul kernels (oneDNN: no AVX512-BF16/AMX)",
        "variants": {},
    }
    for name, t in times.items():
        best = min(t)
        keep = variants[name][1]
        rows = tokens if keep is None else keep * args.batch  # rows of the vocabulary projection
        out["variants"][name] = {
            "step_seconds": best,
            "samples_per_s": args.batch / best,
            "mfu": flops(tokens, rows) / best / (peak_bf16 if "bf16" in name else peak),
            "all_seconds": t,
        }
    v = out["variants"]
    base = v["full logits (before)"]["samples_per_s"]
    out["speedup"] = v["answer logits (after)"]["samples_per_s"] / base
    if bf16:
        out["speedup_bf16"] = v["answer logits, bf16 (after)"]["samples_per_s"] / base
    return out


def bench_grouping(args) -> dict:
    """The same ``--window`` steps of the demo's training stream (2 ranks x micro-batch 2, epoch
    0) as the trainer draws them, and grouped by length (``train.group_by_length``): each
    micro-batch's forward + backward timed, round-robin between the two; a step takes its
    slowest rank's time (ZeRO-3 ranks wait for each other)."""
    from lorarec.trainer.batching import answer_logits_to_keep, answer_token_loss_sum, collate
    from lorarec.trainer.data_stream import TrainStream

    cfg, data, model, tok, builder = setup(args)
    n_train = data.manifest["tasks"][data.task]["samples"]["train"]

    def stream(grouped: bool):
        return TrainStream(
            data.shards("train"),
            data.manifest["options"]["shard_size"],
            n_train,
            rank=0,
            world_size=2,
            micro_batch_size=2,
            accumulation=1,
            seed=cfg.train.seed,
            length=(lambda s: len(builder.build(s).input_ids)) if grouped else None,
            length_window=args.window,
        )

    variants = {}
    for name, grouped in (("as drawn (before)", False), ("grouped by length (after)", True)):
        steps = stream(grouped).steps(0)
        variants[name] = [next(steps) for _ in range(args.window)]
    keys = {
        n: sorted(s["key"] for st in v for sl in st.slots for s in sl) for n, v in variants.items()
    }
    assert len({tuple(k) for k in keys.values()}) == 1, "the variants hold different samples"

    def micro(slot) -> tuple[float, int, int]:
        batch = collate([builder.build(s) for s in slot], tok.pad_token_id)
        start = time.perf_counter()
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=answer_logits_to_keep(batch["labels"]),
        ).logits
        answer_token_loss_sum(logits, batch["labels"]).backward()
        for p in model.parameters():
            p.grad = None
        seconds = time.perf_counter() - start
        return seconds, int(batch["input_ids"].numel()), int(batch["attention_mask"].sum())

    micro(variants["as drawn (before)"][0].slots[0])  # warm-up
    timed = {n: [] for n in variants}
    for i in range(args.window):
        for name, steps in variants.items():
            timed[name].append([micro(slot) for slot in steps[i].slots])
    out = {"window_steps": args.window, "samples": len(next(iter(keys.values()))), "variants": {}}
    for name, steps in timed.items():
        seconds = sum(max(t for t, _, _ in step) for step in steps)
        computed = sum(c for step in steps for _, c, _ in step)
        real = sum(r for step in steps for _, _, r in step)
        out["variants"][name] = {
            "seconds": seconds,
            "samples_per_s": out["samples"] / seconds,
            "padding_fraction": 1 - real / computed,
            "tokens_computed": computed,
        }
    v = out["variants"]
    out["speedup"] = (
        v["grouped by length (after)"]["samples_per_s"] / v["as drawn (before)"]["samples_per_s"]
    )
    return out


def bench_sasrec(args) -> dict:
    from lorarec.classic.sasrec import train_sasrec, training_sequences

    train, valid = prefix_rows(args.rows, args.items, args.cap, args.seed)
    per_row = [[*s["history"], s["target"]] for s in train]
    rebuilt = training_sequences(train)
    out = {}
    for name, seqs in (("per row (before)", per_row), ("whole sequences (after)", rebuilt)):
        start = time.perf_counter()
        _, summary = train_sasrec(
            train,
            valid,
            args.items,
            epochs=args.epochs,
            patience=args.epochs,
            progress=False,
            sequences=seqs,
        )
        epochs = summary["epochs"]
        out[name] = {
            "sequences": len(seqs),
            "windows": epochs[0]["windows"],
            "epoch_seconds": float(np.mean([e["seconds"] for e in epochs])),
            "valid_ndcg@10": epochs[-1]["valid_ndcg@10"],
            "total_seconds": time.perf_counter() - start,
        }
    before, after = out["per row (before)"], out["whole sequences (after)"]
    out["speedup"] = before["epoch_seconds"] / after["epoch_seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--items", type=int, default=3_000)
    p.add_argument("--cap", type=int, default=10, help="history length of a row (LLaRA: 10)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "bench/results/throughput.json"))
    p.add_argument("--config", default="configs/demo.yaml", help="the step's run config")
    p.add_argument("--batch", type=int, default=2, help="the step's micro-batch (demo: 2)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--window", type=int, default=8, help="steps of the grouping comparison")
    p.add_argument("--only", choices=["step", "grouping", "sasrec"], default=None)
    args = p.parse_args()
    result_step = bench_step(args) if args.only in (None, "step") else None
    if result_step is not None:
        r = result_step
        print(
            f"training step: {r['backbone']}; micro-batch {r['batch']}, {r['tokens']} tokens "
            f"(width {r['width']}), logits kept {r['logits_kept']}; fastest of {r['rounds']}"
        )
        print("| logits | step (s) | samples/s | MFU |")
        print("|---|---:|---:|---:|")
        for name, v in r["variants"].items():
            print(
                f"| {name} | {v['step_seconds']:.3f} | {v['samples_per_s']:.3f} | {v['mfu']:.3f} |"
            )
        print(f"samples/s, after / before: {r['speedup']:.2f}x")
        if "speedup_bf16" in r:
            print(f"samples/s, bf16 after / before: {r['speedup_bf16']:.2f}x")
        print(f"bf16: {r['bf16']}\n")
    grouping = bench_grouping(args) if args.only in (None, "grouping") else None
    if grouping is not None:
        print(
            f"training stream: {grouping['window_steps']} steps of 2 ranks x 2 samples "
            f"({grouping['samples']} samples), a step as long as its slowest rank"
        )
        print("| batches | seconds | samples/s | padding |")
        print("|---|---:|---:|---:|")
        for name, v in grouping["variants"].items():
            print(
                f"| {name} | {v['seconds']:.1f} | {v['samples_per_s']:.3f} | "
                f"{v['padding_fraction']:.1%} |"
            )
        print(f"samples/s, after / before: {grouping['speedup']:.2f}x\n")
    sasrec = bench_sasrec(args) if args.only in (None, "sasrec") else None
    if sasrec is not None:
        report_sasrec(args, sasrec)
    write_result(args, result_step, sasrec, grouping)


def report_sasrec(args, sasrec: dict) -> None:
    print(f"SASRec epoch on {args.rows:,} prefix rows ({args.items:,} items, history {args.cap})")
    print("| sequences as | sequences | windows | s / epoch | valid NDCG@10 |")
    print("|---|---:|---:|---:|---:|")
    for name in ("per row (before)", "whole sequences (after)"):
        r = sasrec[name]
        print(
            f"| {name} | {r['sequences']:,} | {r['windows']:,} | {r['epoch_seconds']:.1f} | "
            f"{r['valid_ndcg@10']:.3f} |"
        )
    print(f"epoch time, before / after: {sasrec['speedup']:.1f}x")


def write_result(args, step: dict | None, sasrec: dict | None, grouping: dict | None) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "commit": commit,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
        f"{__import__('os').cpu_count()} CPUs",
        "step": step,
        "grouping": grouping,
        "sasrec": None
        if sasrec is None
        else {"rows": args.rows, "items": args.items, "cap": args.cap, **sasrec},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
