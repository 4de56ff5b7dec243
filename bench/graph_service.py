"""Graph service throughput and the trainer's data wait, measured side by side in one run.

1. Neighbourhoods per second (one neighbourhood = the 2-hop sample around one seed node,
   fanouts [10, 5]) for batches of 32 to 1024 random ML-100K nodes, for: the graph service
   with 1, 2 and 4 shard actors (a client in this process, a local Ray with token auth), the
   in-process sampler on the same CSR (service figures: ``GraphClient.sample_many``, 32 batches
   sharing each request; and one batch at a time for 1 shard), and the reference approach of the GraphLoRA paper's
   code (a per-batch Python BFS over the CSR matrix, ``random.sample`` per node). The methods
   take turns within each round on the same batches; each figure is the fastest round.
2. The fraction of step time a real 2-rank training run (``lorarec train``, GraphLoRA, the
   service on Ray) spends waiting for its data, with prefetch on (the default, depth 2) and,
   in the full run, off. Steps after the first are counted (the first waits for the pipeline
   to fill and for one-time set-up).

    python bench/graph_service.py                 # full: SmolLM2-135M training run
    python bench/graph_service.py --quick         # fewer sizes and rounds, tiny backbone
    python bench/graph_service.py --json PATH     # default bench/results/graph_service.json

Prepares ML-100K itself where `--data` holds no prepared data; the full run needs
`lorarec fetch smollm2-135m`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FANOUTS = [10, 5]


def bfs_reference(indptr, indices, seeds, fanouts, rng: random.Random):
    """The straightforward per-batch sampler of research code: Python loops over the frontier,
    ``random.sample`` of each neighbour list, a dict for node ids."""
    local = {}
    nodes = []
    for s in seeds.tolist():
        if s not in local:
            local[s] = len(nodes)
            nodes.append(s)
    frontier = list(nodes)
    edges = set()
    for fanout in fanouts:
        nxt = []
        for u in frontier:
            nbrs = indices[indptr[u] : indptr[u + 1]].tolist()
            picked = nbrs if len(nbrs) <= fanout else rng.sample(nbrs, fanout)
            for v in picked:
                if v not in local:
                    local[v] = len(nodes)
                    nodes.append(v)
                    nxt.append(v)
                edges.add((local[u], local[v]))
                edges.add((local[v], local[u]))
        frontier = nxt
    return np.array(nodes), np.array(sorted(edges)).T


def _sequential(client):
    return lambda batches: [client.sample(seeds, FANOUTS, i) for i, seeds in enumerate(batches)]


def _grouped(client, group: int = 32):
    def run(batches):
        return list(client.sample_many(((s, i) for i, s in enumerate(batches)), FANOUTS, group))

    return run


def throughput(data_dir: str, sizes: list[int], rounds: int, per_size_seeds: int) -> dict:
    from lorarec.core.config import load_config
    from lorarec.graph_service import partition, service
    from lorarec.graph_service.client import GraphClient
    from lorarec.graph_service.sampler import NeighborSampler
    from lorarec.launch.inputs import ensure_prepared

    # prepared first (fetching ML-100K) on a fresh machine
    data = ensure_prepared(load_config(ROOT / "configs/demo.yaml", [f"data.dir={data_dir}"]))
    indptr, indices = (np.asarray(a) for a in data.graph())
    inproc = NeighborSampler(indptr, indices)
    seqs = None
    parts = {}
    for n in (1, 2, 4):
        d = partition.default_dir(data, n)
        if not (d / "manifest.json").is_file():
            seqs = seqs if seqs is not None else partition.user_sequences(data)
            partition.build(data, n, d, sequences=seqs)
        parts[n] = d
    service.connect(None)
    keep = {n: service.start(p, service.ServiceOptions(), detached=False) for n, p in parts.items()}
    clients = {n: GraphClient(s.namespace) for n, s in keep.items()}
    rng = np.random.default_rng(0)
    py_rng = random.Random(0)
    # the service's throughput with the client's grouping (32 batches share each request), and
    # one batch at a time (latency-bound) for 1 shard
    methods = {
        "inprocess": lambda batches: [inproc.sample(s, FANOUTS, i) for i, s in enumerate(batches)],
        **{f"service_{n}": _grouped(c) for n, c in clients.items()},
        "service_1_sequential": _sequential(clients[1]),
        "bfs_reference": lambda batches: [
            bfs_reference(indptr, indices, s, FANOUTS, py_rng) for s in batches
        ],
    }
    rows = []
    for size in sizes:
        batches = [
            rng.integers(0, inproc.num_nodes, size) for _ in range(max(1, per_size_seeds // size))
        ]
        for fn in methods.values():  # warm-up
            fn(batches[:2])
        best = {name: float("inf") for name in methods}
        for _ in range(rounds):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn(batches)
                best[name] = min(best[name], time.perf_counter() - start)
        n_seeds = size * len(batches)
        row = {"batch": size, "batches": len(batches)}
        row.update({f"{name}_per_s": n_seeds / t for name, t in best.items()})
        rows.append(row)
        print(
            f"batch {size:>5}: " + ", ".join(f"{k} {row[f'{k}_per_s']:,.0f}/s" for k in methods),
            flush=True,
        )
    import ray

    ray.shutdown()
    return {"fanouts": FANOUTS, "rows": rows, "nodes": int(inproc.num_nodes)}


def data_wait(config: str, steps: int, prefetch: int, out: Path, overrides: list[str]) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "lorarec"),
        "train",
        config,
        "--out",
        str(out),
        "train.adapter=graphlora",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={steps + 1}",
        "train.evaluate=false",
        f"graph_service.prefetch={prefetch}",
        *overrides,
    ]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training run failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    steady = records[1:]
    wait = sum(r["data_wait_seconds"] for r in steady)
    total = sum(r["step_seconds"] for r in steady)
    return {
        "prefetch": prefetch,
        "steps_counted": len(steady),
        "data_wait_seconds": wait,
        "step_seconds": total,
        "data_wait_fraction": wait / total,
        "first_step_wait_seconds": records[0]["data_wait_seconds"],
        "batch_build_seconds_mean": sum(r["batch_build_seconds"] for r in steady) / len(steady),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=str(ROOT / "bench/results/graph_service.json"))
    p.add_argument("--data", default=str(ROOT / "runs/data/ml-100k"))
    p.add_argument("--runs", default=str(ROOT / "runs/bench_graph_service"))
    args = p.parse_args()
    started = time.perf_counter()
    if args.quick:
        sizes, rounds, seeds = [32, 256, 1024], 2, 8192
        config, steps, overrides = "configs/tiny.yaml", 6, ["train.micro_batch_size=2"]
    else:
        sizes, rounds, seeds = [32, 64, 128, 256, 512, 1024], 5, 16384
        config, steps, overrides = "configs/demo.yaml", 12, []
    overrides.append(f"data.dir={args.data}")
    report = {"quick": args.quick, "throughput": throughput(args.data, sizes, rounds, seeds)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = Path(args.runs) / stamp
    waits = [data_wait(config, steps, 2, runs / "prefetch2", overrides)]
    if not args.quick:
        waits.append(data_wait(config, steps, 0, runs / "prefetch0", overrides))
    report["data_wait"] = {"config": config, "steps": steps, "runs": waits}
    b256 = next(r for r in report["throughput"]["rows"] if r["batch"] == 256)
    report["ratios"] = {
        "service_vs_inprocess_b256": b256["service_1_per_s"] / b256["inprocess_per_s"],
        "inprocess_vs_bfs_b256": b256["inprocess_per_s"] / b256["bfs_reference_per_s"],
        "data_wait_fraction": waits[0]["data_wait_fraction"],
    }
    report["targets"] = {
        "service_vs_inprocess_b256": ">= 0.5",
        "inprocess_vs_bfs_b256": ">= 10",
        "data_wait_fraction": "<= 0.02",
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(
        "| batch | in-process /s | service 1 shard | 2 shards | 4 shards | "
        "1 shard, one batch at a time | BFS reference |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["throughput"]["rows"]:
        print(
            f"| {r['batch']} | {r['inprocess_per_s']:,.0f} | {r['service_1_per_s']:,.0f} | "
            f"{r['service_2_per_s']:,.0f} | {r['service_4_per_s']:,.0f} | "
            f"{r['service_1_sequential_per_s']:,.0f} | {r['bfs_reference_per_s']:,.0f} |"
        )
    for w in waits:
        print(
            f"data wait, prefetch {w['prefetch']}: {w['data_wait_fraction']:.4f} of step time "
            f"({w['data_wait_seconds']:.3f} s of {w['step_seconds']:.1f} s over "
            f"{w['steps_counted']} steps; first step {w['first_step_wait_seconds']:.2f} s)"
        )
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.3f} (target {report['targets'][k]})")
    from lorarec.core.io import write_json_atomic

    write_json_atomic(Path(args.json), report)
    print(f"results: {args.json} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
