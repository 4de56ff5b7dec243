"""Step time of every adapter against PEFT's own LoRA and against straightforward references.

One forward + backward step (loss on the answer tokens, gradients into every trainable part) on
the same backbone, batch, rank and target modules, for: PEFT LoRA, GraphLoRA (its graph network
over the batch's sampled neighbourhood included), RecLoRA, iLoRA, GraphMoE; and each of the
four with its update computed the straightforward way (a Python loop over experts, or over
samples, as the reference code does). Batches are real ML-100K prompts and real conditioning;
every variant gets the same tokens (the prompts with GraphLoRA's user and item placeholder
tokens, which the other adapters ignore), so the batch is equal; the table also gives the
token count of the prompts without placeholders. Conditioning: neighbourhoods sampled from the training graph with fanouts
[10, 5], sequence states from a SASRec (untrained here: speed does not depend on its weights).
All variants are timed round-robin in one process, so machine noise hits them alike; the
figure is the fastest of the rounds (noise on a shared machine only ever adds time; medians are
in the JSON too). A second measurement times the low-rank update alone (one
adapted projection of the backbone, forward + backward, conditioning precomputed), batched
against the reference loops.

    python bench/adapters.py                 # SmolLM2-135M and the tiny config
    python bench/adapters.py --quick         # the tiny config only, 3 rounds: under a minute
    python bench/adapters.py --json PATH     # default bench/results/adapters.json

Needs `lorarec fetch smollm2-135m`; prepares ML-100K itself where `data.dir` holds no prepared data.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ["graphlora", "reclora", "ilora", "graphmoe"]
TARGET_VS_LORA = {"graphlora": 1.15, "graphmoe": 1.15, "reclora": 1.10, "ilora": 1.10}
TARGET_VS_REFERENCE = 2.0


def build_variants(cfg, data, backbone):
    """name -> (PEFT model, ConditioningBuilder, ExampleBuilder kinds)."""
    from lorarec.classic.sasrec import SASRec, SASRecShape
    from lorarec.trainer.adapter import attach_adapter
    from lorarec.trainer.conditioning import ConditioningBuilder, placeholder_kinds

    s = cfg.sasrec
    sasrec = SASRec(
        SASRecShape(data.num_items, s.hidden_size, s.num_layers, s.num_heads, s.dropout, s.max_len)
    )
    variants = {}
    for name in ["lora", *ADAPTERS]:
        c = copy.deepcopy(cfg)
        c.train.adapter = name
        c.train.graph.init = "random"  # the collaborative init does not change the speed
        model = attach_adapter(copy.deepcopy(backbone), c, data)
        model.train()
        variants[name] = (model, ConditioningBuilder(c, data, sasrec), placeholder_kinds(c))
    for name in ADAPTERS:
        model, cond, kinds = variants[name]
        ref = copy.deepcopy(model)
        for m in ref.modules():
            if hasattr(m, "reference_per_sample"):
                m.reference = True
        variants[f"{name} (reference)"] = (ref, cond, kinds)
    return variants


ALL_PLACEHOLDERS = frozenset({"user", "item"})


def make_batch(cfg, data, tokenizer, placeholders, samples, builder_cond):
    """Token batch with ``placeholders`` and each variant's conditioning (which keys only on the
    placeholder kinds its adapter uses)."""
    from lorarec.trainer.batching import ExampleBuilder, collate

    builder = ExampleBuilder(
        tokenizer,
        data.titles,
        data.task,
        cfg.data.history_short,
        cfg.train.max_length,
        placeholders=placeholders,
    )
    examples = [builder.build(x) for x in samples]
    batch = collate(examples, tokenizer.pad_token_id)
    cond = builder_cond.build(
        samples,
        [e.marks for e in examples],
        [len(e.input_ids) for e in examples],
        batch["input_ids"].shape[1],
        epoch=0,
    )
    return batch, cond


def step(model, batch, cond) -> float:
    from lorarec.trainer.batching import answer_token_loss_sum

    start = time.perf_counter()
    extra = {} if cond is None else {"conditioning": cond}
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra
    ).logits
    loss = answer_token_loss_sum(logits, batch["labels"])
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return time.perf_counter() - start


def bench_backbone(config: str, batch_size: int, rounds: int, history: int) -> dict:
    from lorarec.core.config import load_config
    from lorarec.launch.inputs import ensure_prepared
    from lorarec.trainer.backbone import load_backbone

    cfg = load_config(ROOT / config, [f"data.history_short={history}"])
    data = ensure_prepared(cfg)  # prepared first (fetching ML-100K) on a fresh machine
    backbone, tokenizer = load_backbone(cfg.model)
    samples = data.samples("valid")[:batch_size]
    variants = build_variants(cfg, data, backbone)
    batches = {
        name: (model, *make_batch(cfg, data, tokenizer, ALL_PLACEHOLDERS, samples, cond))
        for name, (model, cond, _) in variants.items()
    }
    plain, _ = make_batch(cfg, data, tokenizer, frozenset(), samples, variants["lora"][1])
    times: dict[str, list[float]] = {name: [] for name in batches}
    for model, batch, cond in batches.values():  # warm-up
        step(model, batch, cond)
    for _ in range(rounds):
        for name, (model, batch, cond) in batches.items():
            times[name].append(step(model, batch, cond))
    out = {
        "backbone": cfg.model.backbone,
        "batch": batch_size,
        "tokens": int(batches["lora"][1]["attention_mask"].sum()),
        "tokens_without_placeholders": int(plain["attention_mask"].sum()),
        "rounds": rounds,
        "trainable_parameters": {
            n: sum(p.numel() for p in m.parameters() if p.requires_grad)
            for n, (m, _, _) in batches.items()
        },
        "median_step_seconds": {n: statistics.median(t) for n, t in times.items()},
        "min_step_seconds": {n: min(t) for n, t in times.items()},
        "step_seconds": times,
    }
    med = out["min_step_seconds"]
    out["ratios"] = {}
    for name in ADAPTERS:
        out["ratios"][f"{name}_vs_peft_lora"] = med[name] / med["lora"]
        out["ratios"][f"{name}_vs_reference"] = med[name] / med[f"{name} (reference)"]
    out["update_seconds"] = update_times(batches, rounds * 3)
    for name in ADAPTERS:
        u = out["update_seconds"]
        out["ratios"][f"{name}_update_vs_reference"] = u[name] / u[f"{name} (reference)"]
    return out


def update_times(batches: dict, rounds: int) -> dict[str, float]:
    """Fastest seconds of forward + backward of the low-rank update alone, at the first adapted
    projection, on that projection's real input width and the batch's tokens."""
    from lorarec.adapters import bind_conditioning
    from lorarec.adapters.tuner import AdapterLinear

    jobs = {}
    for name, (model, batch, cond) in batches.items():
        if cond is None:
            continue
        layer = next(m for m in model.modules() if isinstance(m, AdapterLinear))
        ctx = model.base_model.conditioning_context
        b, t = batch["input_ids"].shape
        with bind_conditioning(model, cond), torch.no_grad():
            ctx.begin_forward(b, t, False)
            state = ctx.state("default")
            ctx.end_forward()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, t, layer.in_features, generator=g).requires_grad_(True)
        jobs[name] = (layer, state, x)
    times: dict[str, list[float]] = {n: [] for n in jobs}
    for _ in range(rounds + 1):
        for name, (layer, state, x) in jobs.items():
            start = time.perf_counter()
            layer.delta("default", x, state).sum().backward()
            times[name].append(time.perf_counter() - start)
    return {n: min(t[1:]) for n, t in times.items()}


def table(result: dict) -> str:
    med, ratios = result["min_step_seconds"], result["ratios"]
    lines = [
        f"{result['backbone']}: batch {result['batch']}, fastest of {result['rounds']} rounds; "
        f"{result['tokens']} tokens ({result['tokens_without_placeholders']} without placeholders)",
        "",
        "| adapter | step (s) | trainable | step vs PEFT LoRA (target) | step vs reference "
        "(target) | update vs reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines.append(
        f"| PEFT LoRA | {med['lora']:.3f} | {result['trainable_parameters']['lora']:,} | 1.00 | | |"
    )
    for name in ADAPTERS:
        vl, vr = ratios[f"{name}_vs_peft_lora"], ratios[f"{name}_vs_reference"]
        vu = ratios[f"{name}_update_vs_reference"]
        lines.append(
            f"| {name} | {med[name]:.3f} | {result['trainable_parameters'][name]:,} | "
            f"{vl:.3f} (<= {TARGET_VS_LORA[name]:.2f}) | {vr:.3f} (<= {1 / TARGET_VS_REFERENCE:.2f}) "
            f"| {vu:.3f} |"
        )
        lines.append(
            f"| {name} (reference) | {med[name + ' (reference)']:.3f} | | "
            f"{med[name + ' (reference)'] / med['lora']:.3f} | | |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="the tiny config only (a smoke run, under a minute)"
    )
    p.add_argument("--json", default=str(ROOT / "bench/results/adapters.json"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    batch = args.batch or 4
    rounds = args.rounds or (3 if args.quick else 7)
    start = time.perf_counter()
    results = {}
    if not args.quick:
        results["smollm2"] = bench_backbone("configs/demo.yaml", batch, rounds, 10)
    results["tiny"] = bench_backbone("configs/tiny.yaml", batch, rounds, 10)
    report = {
        "command": " ".join(["python", "bench/adapters.py", *sys.argv[1:]]),
        "quick": args.quick,
        # the SmolLM2 figures; a --quick run has the tiny config's only
        "ratios": results["tiny" if args.quick else "smollm2"]["ratios"],
        "targets": {
            **{f"{n}_vs_peft_lora": f"<= {t}" for n, t in TARGET_VS_LORA.items()},
            **{f"{n}_vs_reference": f"<= {1 / TARGET_VS_REFERENCE}" for n in ADAPTERS},
        },
        "backbones": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for r in results.values():
        print(table(r) + "\n")
    from lorarec.core.io import write_json_atomic

    write_json_atomic(Path(args.json), report)
    print(f"results: {args.json} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
