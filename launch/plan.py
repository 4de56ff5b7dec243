"""``lorarec plan``: will a backbone + adapter fit a cluster, and with which DeepSpeed config?

Parameters are counted exactly: the backbone is built from its architecture on the meta device
(``accelerate.init_empty_weights``: shapes, no memory, no weights) and the run's adapter is
attached to it the way training attaches it (``get_peft_model``), so every expert, router, gate,
graph network and node embedding is counted.

Memory per GPU under ZeRO-3 with ``W`` ranks (bytes; ``P`` frozen backbone parameters, ``A``
trainable adapter parameters, ``L`` the most parameters one module holds itself):

* frozen backbone, bf16, partitioned: ``2 P / W``;
* adapter: bf16 weights ``2 A / W`` + gradients ``g A / W`` (``g`` = 4 with the fp32 gradient
  accumulation of the recommended configs, 2 with bf16) + fp32 master weights and Adam's two
  moments ``12 A / W``; ``offload optimizer`` moves the gradients, master weights and moments to
  host memory, ``offload params`` the weights too, ``nvme`` the optimizer states to local disk;
* gathered weights: while a module runs, its full bf16 weights (``2 L`` for the largest, plus
  ``2 L`` of gradients when the backbone itself trains). With the recommended
  ``stage3_max_reuse_distance``, ZeRO-3 keeps gathered modules alive up to
  ``stage3_max_live_parameters`` (1e9: 2 GB) rather than gathering them again in the backward
  pass, so the live set is ``2 min(max_live, P + A)`` bytes;
* communication buffers: the next module being fetched (at least the prefetch bucket, at most
  the largest layer) and the gradient reduce bucket;
* on CPU ranks (``--device cpu``, gloo), gloo's all-gather stages a copy of the module being
  gathered: ``2 L`` more;
* frozen encoders held whole by every rank (iLoRA's and RecLoRA's SASRec; the collaborative
  table of LoRA's collab tokens; fp32);
* activations of a micro-batch of ``T = B x seq_len`` tokens, per decoder layer and token
  ``16 h + 4 h_kv + 6 i`` bytes (fp32 RMSNorm inputs, normed inputs, rotated q/k, v, attention
  output with a fused attention kernel, gate/up/SiLU outputs of the MLP), plus a dropout copy
  and mask per adapted module. With gradient checkpointing only each layer's bf16 input
  (``2 h``) is kept, and one layer is recomputed at a time. One more layer's worth is counted as
  the backward pass's working memory either way;
* logits and loss: ``14 T V`` (bf16 logits, their fp32 copy, the saved log-softmax and its
  gradient).

Evaluation runs in the same ranks after training, under the same engine (every partitioned
state above stays allocated), with no gradients and nothing kept for a backward pass; per GPU
it adds, for the largest of its three scorings (``E`` prompts of ``seq_len`` tokens a batch,
``E`` = 8; ``K`` candidates of up to ``a`` answer tokens, 20 and 24; ``n`` new tokens, 48):

* the KV cache, ``4 h_kv`` bytes per token and layer (bf16 K and V): the prompt's repeated for
  the ``K`` candidates (likelihood), or ``E`` prompts with ``n`` generated tokens (generation);
* one layer's working memory ``16 h + 4 h_kv + 6 i`` per token for the largest forward
  (``E`` prompts, or the ``K x a`` candidate tokens);
* logits ``10 V`` per scored position (bf16, the fp32 copy, the log-softmax) of the ``K x a``
  candidate tokens.

The plan fits when the larger of the training and the evaluation peaks does.

Model states for full fine-tuning (every parameter trainable) reduce to DeepSpeed's own
``estimate_zero3_model_states_mem_needs``: ``18 P / W + 4 L`` per GPU, ``2 P / W + 4 L`` with the
optimizer offloaded (host: ``16 P`` per node), ``4 L`` with parameters offloaded (host: ``18 P``
per node); ``tests/test_plan.py`` checks this against DeepSpeed for 135M to 70B on 1 to 16 GPUs.
The runtime reserve (CUDA context, NCCL buffers, allocator fragmentation) is a setting
(``--reserve``), not a measurement.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lorarec.core.config import RunConfig
from lorarec.core.errors import UsageError

GiB = 1024**3
OFFLOADS = ("none", "optimizer", "params", "nvme")
# The graph and catalogue of the embedded default data set (MovieLens-100K: 943 users, 1,682
# items), used when neither --data nor --graph-nodes/--items says otherwise.
DEFAULT_USERS, DEFAULT_ITEMS = 943, 1682
NVME_PATH = "/local_nvme"


@dataclass
class Counts:
    """Exact parameter counts of a backbone + adapter."""

    backbone: str
    base: int
    largest_layer: int
    largest_layer_name: str
    layers: int
    hidden: int
    kv_hidden: int
    intermediate: int
    vocab: int
    adapter: int
    adapter_parts: dict[str, int]
    adapted_inputs: int
    """Sum of the input widths of the adapted modules of one decoder layer."""
    encoders: int
    """Frozen encoders every rank holds whole (SASRec; the collab tokens' table), fp32."""


@dataclass
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float
    cpu_mem_gib: float | None = None
    reserve_gib: float = 2.0
    device: str = "gpu"
    """``gpu`` (nccl) or ``cpu``: ranks on CPUs with gloo, whose all-gather stages a copy of the
    gathered module (measured: a 470 MB gather peaks 472 MB above its output)."""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Workload:
    adapter: str
    rank: int
    seq_len: int
    micro_batch: int
    grad_checkpointing: bool
    offload: str = "none"
    full: bool = False
    """Every backbone parameter trainable (full fine-tuning; for comparison only)."""
    lora_dropout: float = 0.05
    evaluate: bool = True
    """The ranks evaluate the LLM after training (``train.evaluate``)."""
    eval_batch: int = 8
    eval_candidates: int = 20
    eval_answer_tokens: int = 24
    eval_new_tokens: int = 48


@dataclass
class Plan:
    counts: Counts
    cluster: Cluster
    work: Workload
    gpu: dict[str, float]
    """Bytes per GPU by item."""
    host: dict[str, float]
    """Host bytes per node by item."""
    disk: float
    """NVMe bytes per node."""
    activations_other: float
    """Activation bytes per GPU with the other gradient-checkpointing choice."""
    ds_config: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, float] = field(default_factory=dict)
    """Bytes per GPU that evaluation adds to the partitioned states, by item (empty: the run
    does not evaluate in the ranks)."""

    @property
    def gpu_total(self) -> float:
        """The training peak per GPU."""
        return sum(self.gpu.values())

    @property
    def eval_total(self) -> float:
        """The evaluation peak per GPU: what stays of training (all but its activations and
        logits) and evaluation's own memory."""
        if not self.eval:
            return 0.0
        kept = self.gpu_total - self.gpu["activations"] - self.gpu["logits + loss"]
        return kept + sum(self.eval.values())

    @property
    def gpu_needed(self) -> float:
        return max(self.gpu_total, self.eval_total) + self.cluster.reserve_gib * GiB

    @property
    def fits_gpu(self) -> bool:
        return self.gpu_needed <= self.cluster.gpu_mem_gib * GiB

    @property
    def host_total(self) -> float:
        return sum(self.host.values())

    @property
    def fits_host(self) -> bool | None:
        if self.cluster.cpu_mem_gib is None:
            return None
        return self.host_total <= self.cluster.cpu_mem_gib * GiB

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host is not False

    def model_states_gpu(self) -> float:
        """What DeepSpeed's estimator calls model states: partitioned states + gathered layer."""
        keys = ("base weights", "adapter weights + grads", "optimizer states", "gathered layer")
        return sum(self.gpu.get(k, 0.0) for k in keys)

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": asdict(self.counts),
            "cluster": asdict(self.cluster),
            "workload": asdict(self.work),
            "gpu_bytes": self.gpu,
            "gpu_total_bytes": self.gpu_total,
            "gpu_needed_bytes": self.gpu_needed,
            "host_bytes_per_node": self.host,
            "nvme_bytes_per_node": self.disk,
            "activation_bytes_other_checkpointing": self.activations_other,
            "eval_gpu_bytes": self.eval,
            "eval_total_bytes": self.eval_total,
            "fits": self.fits,
            "ds_config": self.ds_config,
        }


# ------------------------------------------------------------------------------- counting


def architecture_of(cfg: RunConfig, backbone: str):
    """The transformers config of ``backbone``: a preset, a config.json or model directory, the
    fetched asset, or ``tiny-random`` with ``model.tiny``'s shape."""
    from lorarec.core.presets import PRESETS, architecture

    if backbone == "tiny-random":
        from lorarec.trainer.backbone import byte_level_tokenizer, tiny_config

        return tiny_config(cfg.model.tiny, len(byte_level_tokenizer()))
    if backbone in PRESETS or Path(backbone).expanduser().exists():
        return architecture(backbone)
    from lorarec.core.assets import ASSETS, asset_path, is_fetched

    if backbone in ASSETS and is_fetched(backbone):
        return architecture(str(asset_path(backbone)))
    raise UsageError(
        f"--backbone {backbone}: not a preset ({', '.join(PRESETS)}), tiny-random, a "
        "config.json or a model directory"
    )


def count(
    cfg: RunConfig, backbone: str, graph_nodes: int, items: int, full: bool = False
) -> Counts:
    """Build ``backbone`` + ``cfg.train.adapter`` on the meta device and count; the graph
    network embeds ``graph_nodes`` nodes, SASRec ``items`` items."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    arch = architecture_of(cfg, backbone)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(arch, dtype=torch.bfloat16)
    model.tie_weights()  # init_empty_weights skips the tying from_pretrained does
    if not full:
        check_target_modules(model, cfg.train.lora.target_modules, backbone)
    base = sum(p.numel() for p in model.parameters())
    largest, largest_name = 0, ""
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > largest:
            largest, largest_name = n, name
    hidden = arch.hidden_size
    heads = arch.num_attention_heads
    head_dim = getattr(arch, "head_dim", None) or hidden // heads
    kv_hidden = getattr(arch, "num_key_value_heads", heads) * head_dim
    adapter, parts, adapted = 0, {}, 0
    t = cfg.train
    if not full:
        from peft import get_peft_model

        from lorarec.trainer.adapter import peft_config

        data = SimpleNamespace(num_users=0, num_items=graph_nodes)  # nodes: users + items
        with init_empty_weights():
            peft_model = get_peft_model(model, peft_config(cfg, data))
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                adapter += p.numel()
                part = _part_of(name, t.adapter)
                parts[part] = parts.get(part, 0) + p.numel()
        first = None
        for name, module in peft_model.named_modules():
            if hasattr(module, "in_features") and hasattr(module, "base_layer"):
                index = _layer_index(name)
                if first is None:
                    first = index
                if index == first:
                    adapted += module.in_features
    encoders = 0
    if t.adapter in ("ilora", "reclora") and not full:
        from lorarec.classic.sasrec import SASRec, SASRecShape

        s = cfg.sasrec
        with init_empty_weights():
            enc = SASRec(
                SASRecShape(items, s.hidden_size, s.num_layers, s.num_heads, s.dropout, s.max_len)
            )
        encoders = sum(p.numel() for p in enc.parameters())
    if t.adapter == "lora" and t.lora.collab_tokens and not full:
        encoders = graph_nodes * t.graph.node_dim  # the frozen collaborative table
    return Counts(
        backbone=backbone,
        base=base,
        largest_layer=largest,
        largest_layer_name=largest_name,
        layers=arch.num_hidden_layers,
        hidden=hidden,
        kv_hidden=kv_hidden,
        intermediate=arch.intermediate_size,
        vocab=arch.vocab_size,
        adapter=adapter,
        adapter_parts=parts,
        adapted_inputs=adapted,
        encoders=encoders,
    )


def check_target_modules(model, targets: list[str], backbone: str) -> None:
    """Every ``train.lora.target_modules`` entry names a module of ``model`` (PEFT's rule: the
    module's name, or its dotted suffix), before PEFT is asked to attach to it."""
    import torch

    names = [name for name, _ in model.named_modules() if name]
    for i, target in enumerate(targets):
        if not any(name == target or name.endswith("." + target) for name in names):
            linear = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)
                }
            )
            raise UsageError(
                f"--backbone {backbone}: train.lora.target_modules[{i}]: {target!r} is not a "
                f"module of {backbone} (its linear modules: {', '.join(linear)})"
            )


def _layer_index(name: str) -> int | None:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _part_of(name: str, adapter: str) -> str:
    """A readable group for an adapter parameter's name."""
    for key, label in (
        ("_gnn.", "graph network + node embeddings"),
        ("_gate.", "gate"),
        ("_projector.", "projector"),
        ("router", "routers"),
        ("_bank.", "low-rank banks" if adapter != "ilora" else "experts"),
        ("lora_", "low-rank factors"),
    ):
        if key in name:
            return label
    return "other"


# --------------------------------------------------------------------------------- memory


def ds_config_for(work: Workload) -> dict[str, Any]:
    """The DeepSpeed config the plan assumes (and recommends) for ``work``."""
    zero: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
        "stage3_prefetch_bucket_size": 50_000_000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 1_000_000_000,
        "stage3_max_reuse_distance": 1_000_000_000,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if work.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if work.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if work.offload == "nvme":
        zero["offload_optimizer"] = {
            "device": "nvme",
            "nvme_path": NVME_PATH,
            "pin_memory": True,
        }
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": True},
        # bf16 gradients summed over micro-batches lose precision; DeepSpeed accumulates in fp32
        "data_types": {"grad_accum_dtype": "fp32"},
    }


def activation_bytes(c: Counts, work: Workload, checkpointing: bool) -> float:
    """Activations of one micro-batch on one GPU (see the module docstring)."""
    tokens = work.micro_batch * work.seq_len
    h, kv, i = c.hidden, c.kv_hidden, c.intermediate
    per_layer = 16 * h + 4 * kv + 6 * i
    if work.lora_dropout > 0 and not work.full:
        per_layer += 3 * c.adapted_inputs  # a bf16 dropout copy and a bool mask per module
    layer = tokens * per_layer
    kept = c.layers * tokens * 2 * h if checkpointing else c.layers * layer
    return kept + layer + tokens * 2 * h  # + the backward's working layer + embeddings


def evaluation_bytes(c: Counts, work: Workload) -> dict[str, float]:
    """What evaluation adds per GPU (see the module docstring)."""
    h, kv, i, L = c.hidden, c.kv_hidden, c.intermediate, c.layers
    prompts = work.eval_batch * work.seq_len
    answers = work.eval_candidates * work.eval_answer_tokens
    cache_tokens = max(
        work.eval_candidates * (work.seq_len + work.eval_answer_tokens),  # likelihood
        work.eval_batch * (work.seq_len + work.eval_new_tokens),  # generation
        2 * work.eval_batch * (work.seq_len + work.eval_answer_tokens),  # CTR's two answers
    )
    return {
        "kv cache": 4 * kv * L * cache_tokens,
        "working layer": (16 * h + 4 * kv + 6 * i) * max(prompts, answers),
        "logits": 10 * c.vocab * answers,
    }


def plan(counts: Counts, cluster: Cluster, work: Workload) -> Plan:
    ds = ds_config_for(work)
    z = ds["zero_optimization"]
    w, n = cluster.world, cluster.gpus_per_node
    grad = 4 if ds["data_types"]["grad_accum_dtype"] == "fp32" else 2
    frozen = 0 if work.full else counts.base
    trainable = counts.base if work.full else counts.adapter
    off_opt = work.offload in ("optimizer", "params", "nvme")
    off_par = work.offload == "params"
    gpu: dict[str, float] = {}
    host: dict[str, float] = {}
    disk = 0.0

    weights = 2 * (frozen + trainable) / w
    gpu["base weights"] = 0.0 if off_par else 2 * (trainable if work.full else frozen) / w
    # full fine-tuning: the backbone's gradients; otherwise the adapter's weights and gradients
    own = 0.0 if (work.full or off_par) else 2 * trainable / w
    gpu["adapter weights + grads"] = own + (0.0 if off_opt else grad * trainable / w)
    optimizer = 12 * trainable / w
    gpu["optimizer states"] = 0.0 if off_opt else optimizer
    # DeepSpeed's estimate counts the largest layer gathered with its gradients (full
    # fine-tuning); the live set beyond it is the "gathered parameters" row
    gpu["gathered layer"] = 2 * counts.largest_layer * (2 if work.full else 1)
    live = min(z["stage3_max_live_parameters"], frozen + trainable)
    gpu["gathered parameters"] = 2 * max(0, live - counts.largest_layer)
    gpu["prefetch + reduce buckets"] = 2 * max(
        z["stage3_prefetch_bucket_size"], counts.largest_layer
    ) + grad * min(z["reduce_bucket_size"], trainable)
    if cluster.device == "cpu":
        gpu["gloo all-gather staging"] = 2 * counts.largest_layer
    gpu["frozen encoders"] = 4 * counts.encoders
    gpu["activations"] = activation_bytes(counts, work, work.grad_checkpointing)
    tokens = work.micro_batch * work.seq_len
    gpu["logits + loss"] = 14 * tokens * counts.vocab

    if off_par:
        host["weights (offloaded)"] = n * weights
    if work.offload in ("optimizer", "params"):
        host["optimizer states + grads (offloaded)"] = n * (12 + grad) * trainable / w
    if work.offload == "nvme":
        host["grads (offloaded)"] = n * grad * trainable / w
        disk = n * optimizer
    # from_pretrained under zero.Init: each rank gathers one module at a time in fp32 to load it
    host["model loading (largest layer, fp32)"] = n * 4 * counts.largest_layer
    host["frozen encoders"] = n * 4 * counts.encoders
    return Plan(
        counts=counts,
        cluster=cluster,
        work=work,
        gpu=gpu,
        host=host,
        disk=disk,
        activations_other=activation_bytes(counts, work, not work.grad_checkpointing),
        ds_config=ds,
        eval=evaluation_bytes(counts, work) if work.evaluate else {},
    )


def recommend(counts: Counts, cluster: Cluster, work: Workload) -> Plan | None:
    """The least offload that fits, gradient checkpointing tried before each further offload;
    None when nothing fits."""
    for offload in OFFLOADS[OFFLOADS.index(work.offload) :]:
        for ckpt in dict.fromkeys((work.grad_checkpointing, True)):
            p = plan(counts, cluster, _with(work, grad_checkpointing=ckpt, offload=offload))
            if p.fits:
                return p
    return None


def _with(work: Workload, **changes: Any) -> Workload:
    w = copy.copy(work)
    for k, v in changes.items():
        setattr(w, k, v)
    return w


# --------------------------------------------------------------------------------- output


def _gib(b: float) -> str:
    return f"{b / GiB:,.2f}"


def render(p: Plan, seconds: float | None = None) -> str:
    c, cl, w = p.counts, p.cluster, p.work
    what = "full fine-tuning" if w.full else f"{w.adapter} (r={w.rank})"
    unit = "GPU(s)" if cl.device == "gpu" else "CPU rank(s) (gloo)"
    lines = [
        f"plan: {c.backbone} + {what} on {cl.nodes} node(s) x {cl.gpus_per_node} {unit} x "
        f"{cl.gpu_mem_gib:g} GiB, ZeRO-3, bf16",
        f"  backbone parameters  {c.base:,} (largest layer {c.largest_layer:,}: "
        f"{c.largest_layer_name or '-'})",
    ]
    if not w.full:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(p.counts.adapter_parts.items()))
        lines.append(f"  adapter parameters   {c.adapter:,} trainable ({parts})")
        if c.encoders:
            enc = "collaborative table" if w.adapter == "lora+collab" else "SASRec"
            lines.append(f"  frozen encoders      {c.encoders:,} ({enc}, whole on every rank)")
    lines.append(
        f"  micro-batch {w.micro_batch} x {w.seq_len} tokens, gradient checkpointing "
        f"{'on' if w.grad_checkpointing else 'off'}, offload {w.offload}"
    )
    lines.append("")
    width = 40
    each = "GPU" if cl.device == "gpu" else "rank"
    lines.append(f"  {each + ' memory (GiB)':<{width}}{'per ' + each:>10}{'per node':>11}")
    labels = {
        "base weights": f"backbone weights, bf16, 1/{cl.world}",
        "adapter weights + grads": f"adapter weights + grads, 1/{cl.world}",
        "optimizer states": f"fp32 master + Adam m, v, 1/{cl.world}",
        "gathered layer": "largest layer gathered (bf16)",
        "gathered parameters": "other gathered layers (max live)",
        "prefetch + reduce buckets": "layer in flight + reduce bucket",
        "gloo all-gather staging": "gloo all-gather staging (CPU ranks)",
        "frozen encoders": "frozen encoders (fp32)",
        "activations": "activations" + (" (checkpointed)" if w.grad_checkpointing else ""),
        "logits + loss": "logits + loss",
    }
    n = cl.gpus_per_node
    for key, value in p.gpu.items():
        lines.append(f"  {labels.get(key, key):<{width}}{_gib(value):>10}{_gib(n * value):>11}")
    lines.append(f"  {'total':<{width}}{_gib(p.gpu_total):>10}{_gib(n * p.gpu_total):>11}")
    reserve = cl.reserve_gib * GiB
    lines.append(
        f"  {'reserve (CUDA context, NCCL, allocator)':<{width}}{_gib(reserve):>10}"
        f"{_gib(n * reserve):>11}"
    )
    free = cl.gpu_mem_gib * GiB - p.gpu_needed
    lines.append(
        f"  {'fits ' + format(cl.gpu_mem_gib, 'g') + ' GiB':<{width}}"
        f"{'yes' if p.fits_gpu else 'NO':>10}   "
        + (
            f"{_gib(free)} GiB free per {each}"
            if free >= 0
            else f"{_gib(-free)} GiB short per {each}"
        )
    )
    if p.eval:
        lines.append(f"  {'evaluation (after training, same ranks)':<{width}}")
        for key, value in p.eval.items():
            lines.append(f"  {'  ' + key:<{width}}{_gib(value):>10}{_gib(n * value):>11}")
        lines.append(
            f"  {'  total (training states kept)':<{width}}{_gib(p.eval_total):>10}"
            f"{_gib(n * p.eval_total):>11}"
        )
    other = "without" if w.grad_checkpointing else "with"
    alt = p.gpu_total - p.gpu["activations"] + p.activations_other
    lines.append(
        f"  activations {other} gradient checkpointing: {_gib(p.activations_other)} GiB per {each} "
        f"(total {_gib(alt)} GiB)"
    )
    lines.append("")
    lines.append(f"  {'host memory per node (GiB)':<{width}}{'':>10}{'per node':>11}")
    for key, value in p.host.items():
        lines.append(f"  {key:<{width}}{'':>10}{_gib(value):>11}")
    host_fit = p.fits_host
    verdict = "" if host_fit is None else ("  fits" if host_fit else "  does NOT fit")
    lines.append(f"  {'total':<{width}}{'':>10}{_gib(p.host_total):>11}{verdict}")
    if p.disk:
        lines.append(f"  {'NVMe (optimizer states)':<{width}}{'':>10}{_gib(p.disk):>11}")
    lines.append("")
    lines.append(f"fits: {'yes' if p.fits else 'no'}")
    if seconds is not None:
        lines.append(f"(planned in {seconds:.1f} s)")
    return "\n".join(lines)


def launch_command(p: Plan, config: str | None, ds_path: str) -> str:
    w, cl = p.work, p.cluster
    args = [
        "lorarec",
        "train",
        config or "CONFIG",
        f"model.backbone={p.counts.backbone}",
        "model.dtype=bfloat16",
        f"deepspeed.config={ds_path}",
        *(
            ["train.adapter=lora", "train.lora.collab_tokens=true"]
            if w.adapter == "lora+collab"
            else [f"train.adapter={w.adapter}"]
        ),
        f"train.lora.rank={w.rank}",
        f"train.max_length={w.seq_len}",
        f"train.micro_batch_size={w.micro_batch}",
        f"train.gradient_checkpointing={'true' if w.grad_checkpointing else 'false'}",
        f"launch.nodes={cl.nodes}",
        f"launch.ranks_per_node={cl.gpus_per_node}",
        "launch.accelerator=cuda",
    ]
    multi = "--emit-slurm job.sbatch" if cl.nodes > 1 else ""
    return " ".join(shlex.quote(a) for a in args) + (f" {multi}" if multi else "")


# ------------------------------------------------------------------------------------ CLI


def main(args) -> int:
    from lorarec.core.config import load_config
    from lorarec.trainer.conditioning import adapter_label

    start = time.perf_counter()
    for name, value in (
        ("--nodes", args.nodes),
        ("--gpus-per-node", args.gpus_per_node),
        ("--rank", args.rank),
        ("--seq-len", args.seq_len),
        ("--micro-batch", args.micro_batch),
        ("--graph-nodes", args.graph_nodes),
        ("--items", args.items),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    for name, value in (("--gpu-mem", args.gpu_mem), ("--cpu-mem", args.cpu_mem)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive finite number of GiB, got {value}")
    cpu = args.device == "cpu"
    if args.reserve is not None and not (math.isfinite(args.reserve) and args.reserve >= 0):
        raise UsageError(
            f"--reserve must be a finite number of GiB, at least 0, got {args.reserve}"
        )
    overrides = list(args.overrides)
    if args.adapter:  # lora+collab: plain LoRA with collab tokens
        collab = args.adapter == "lora+collab"
        overrides.append(f"train.adapter={'lora' if collab else args.adapter}")
        overrides.append(f"train.lora.collab_tokens={'true' if collab else 'false'}")
    if args.rank is not None:
        overrides.append(f"train.lora.rank={args.rank}")
    cfg = load_config(args.config, overrides)
    t = cfg.train
    users, items = DEFAULT_USERS, DEFAULT_ITEMS
    if args.data:
        from lorarec.data.prepared import PreparedData

        data = PreparedData.open(args.data, cfg.data.prepared_task)
        users, items = data.num_users, data.num_items
    items = args.items or items
    graph_nodes = args.graph_nodes or users + items
    backbone = args.backbone or cfg.model.backbone
    counts = count(cfg, backbone, graph_nodes, items)
    cluster = Cluster(
        nodes=args.nodes or cfg.launch.nodes,
        gpus_per_node=args.gpus_per_node or cfg.launch.ranks_per_node,
        gpu_mem_gib=args.gpu_mem,
        cpu_mem_gib=args.cpu_mem,
        reserve_gib=args.reserve if args.reserve is not None else (0.0 if cpu else 2.0),
        device=args.device,
    )
    work = Workload(
        adapter=adapter_label(cfg),
        rank=t.lora.rank,
        seq_len=args.seq_len or t.max_length,
        micro_batch=args.micro_batch or t.micro_batch_size,
        grad_checkpointing=args.grad_checkpointing or t.gradient_checkpointing,
        offload=args.offload,
        lora_dropout=t.lora.dropout,
        evaluate=t.evaluate,
        eval_candidates=cfg.data.num_candidates,
        eval_new_tokens=cfg.eval.max_new_tokens,
    )
    p = plan(counts, cluster, work)
    chosen = p if p.fits else recommend(counts, cluster, work)
    seconds = time.perf_counter() - start
    if args.json:
        out = p.to_json()
        out["recommended"] = None if chosen is None else chosen.to_json()
        print(json.dumps(out, indent=2))
    else:
        print(render(p, seconds))
        if chosen is None:
            print(
                "recommended: nothing fits; add nodes or GPUs, shorten --seq-len or lower "
                "--micro-batch"
            )
        else:
            if chosen is not p:
                cw = chosen.work
                print(
                    f"recommended: gradient checkpointing "
                    f"{'on' if cw.grad_checkpointing else 'off'}, offload {cw.offload} "
                    f"({_gib(chosen.gpu_needed)} GiB per GPU with the reserve)"
                )
            ds_path = "DIR/ds_config.json"
            if args.write:
                ds_path = str(Path(args.write) / "ds_config.json")
            print("ds_config:", json.dumps(chosen.ds_config, separators=(",", ":")))
            print("launch:", launch_command(chosen, args.config, ds_path))
    if args.write:
        from lorarec.core.io import write_json_atomic

        if chosen is None:
            raise UsageError("--write: nothing fits, so there is no DeepSpeed config to write")
        d = Path(args.write)
        if d.exists() and not d.is_dir():
            raise UsageError(f"--write {d}: not a directory")
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "plan.json", {**chosen.to_json(), "asked": p.to_json()})
        write_json_atomic(d / "ds_config.json", chosen.ds_config)
        print(f"wrote {d / 'ds_config.json'} and {d / 'plan.json'}", file=sys.stderr)
    return 0
