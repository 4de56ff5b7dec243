"""Run configs: one YAML file per run, validated against typed dataclasses.

* Unknown keys are rejected, naming the nearest valid key.
* Wrong types name the key and the expected type.
* ``key.sub=value`` overrides from the command line are applied before validation, with the
  value parsed as YAML (``train.lr=1e-4``, ``eval.baselines=[random,sasrec]``).
* :func:`dump_config` writes the fully resolved config (every default filled in).

Later parts of the system add sections here; every section is a dataclass, so one schema
describes the whole file.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lorarec.core.errors import ConfigError

Task = Literal["next_item", "ctr"]


@dataclass
class DataConfig:
    """Where the prepared data lives and how it is prepared (``lorarec data prepare``)."""

    source: str = "ml-100k"
    """``ml-100k`` or a path to a file/directory of the given ``format``."""
    format: Literal["ml-100k", "interactions", "sequences"] = "ml-100k"
    dir: str = "runs/data/ml-100k"
    """Prepared data directory (output of ``lorarec data prepare``)."""
    task: Task = "next_item"
    split: Literal["user", "global"] = "user"
    """``user``: per user, last interaction test, second last valid; ``global``: 8:1:1 by
    global timestamp (``ctr`` only)."""
    seed: int = 42
    history_short: int = 10
    """Items of history shown to the LLM as titles."""
    history_long: int = 50
    """Items of history kept for sequence encoders."""
    num_candidates: int = 20
    min_history: int = 2
    """A training sample needs at least this many earlier items."""
    positive_rating: float = 4.0
    """CTR label: rating >= this is positive."""
    shard_size: int = 10000
    """Samples per webdataset tar shard."""
    item_noun: str = "movie"
    """What the prompts call an item (``song``, ``game``, ``product``)."""
    item_noun_plural: str = "movies"
    verb: str = "watch"
    """What a user does with an item, in the prompts (``listen to``, ``play``, ``buy``)."""
    verb_past: str = "watched"
    """The same verb in the past tense (``listened to``, ``played``, ``bought``)."""

    @property
    def prepared_task(self) -> str:
        """The task directory of the prepared data: ``next_item``, ``ctr`` or ``ctr_global``."""
        if self.split == "global" and self.task != "ctr":
            raise ConfigError(
                "data.split: global is a split of the ctr task only (next_item splits per user)"
            )
        return self.task if self.split == "user" else f"{self.task}_global"


@dataclass
class TinyBackboneConfig:
    """Shape of the random Llama of ``model.backbone: tiny-random`` (byte-level vocabulary of
    259 tokens, seeded weights): tiny for tests, or a large model's layer shape to exercise
    that width without its weights (``configs/wide70b.yaml``)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0


@dataclass
class ModelConfig:
    backbone: str = "smollm2-135m"
    """A fetched asset name, a preset (``llama-3-70b``, ``llama-3-8b``, ``qwen2.5-72b``,
    ``qwen2.5-7b``, ``smollm2-135m``: see ``configs/backbones/``), a local Hugging Face
    directory, a hub name, or ``tiny-random``."""
    weights: str | None = None
    """For a preset: the local directory (or hub name) of its weights; null: the preset's hub
    repository. The weights' architecture must be the preset's."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Compute dtype of the backbone and adapter. ``auto``: ``bfloat16`` where the machine that
    starts the run computes in bf16 natively (a GPU with bf16, a CPU with oneDNN's bf16 kernels:
    AVX512-BF16 or AMX), else ``float32``; resolved when the config is read, so the run's
    ``config.yaml`` holds the dtype it ran in. DeepSpeed keeps fp32 master weights and optimizer
    state either way."""
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)


@dataclass
class SASRecConfig:
    """The sequence recommender: a baseline and, later, the encoder of gates and routers."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 42


@dataclass
class EvalConfig:
    split: Literal["valid", "test"] = "test"
    baselines: list[
        Literal[
            "random", "popularity", "sasrec", "like_rate", "mf", "din", "lightgcn", "sasrec_subset"
        ]
    ] = field(default_factory=lambda: ["random", "popularity", "sasrec"])
    """``like_rate``, ``mf`` and ``din`` are CTR-only (trained on the like/dislike labels);
    ``sasrec_subset`` is SASRec trained on the ``train.max_samples`` samples the LLM trains on."""
    llm_methods: list[Literal["likelihood", "generation"]] = field(
        default_factory=lambda: ["likelihood", "generation"]
    )
    llm_limit: int | None = 200
    """Samples the LLM is evaluated on (a fixed seeded subset); null for all."""
    max_new_tokens: int = 48
    bootstrap: int = 1000
    seed: int = 0


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    collab_tokens: bool = False
    """Plain LoRA given the collaborative embeddings of the prompt's user and items as input
    tokens at their placeholders (CoLLM's design; ``train.adapter: lora`` only): the row that
    separates a graph adapter's structure from the collaborative signal it carries."""


@dataclass
class GraphSettings:
    """The graph network of GraphLoRA and GraphMoE, and the neighbourhoods it runs on."""

    network: Literal["lightgcn", "gcn", "ngcf"] = "lightgcn"
    layers: int = 2
    node_dim: int = 64
    fanouts: list[int] = field(default_factory=lambda: [10, 5])
    """Neighbours kept per node at each hop of the batch's sampled subgraph (-1: all)."""
    init: Literal["lightgcn", "mf", "random"] = "lightgcn"
    """Node embeddings start from a collaborative model pre-trained on the training graph."""
    init_epochs: int = 20
    text_features: bool = False
    """Concatenate MiniLM embeddings of the item titles to the node embeddings."""


@dataclass
class GraphLoraSettings:
    a: float = 1.0
    b: float = 0.1
    layers: list[int] | None = None
    """Decoder layers that take the graph term (null: every adapted layer)."""


@dataclass
class ILoraSettings:
    experts: int = 4
    gate_hidden: int = 64
    scale: Literal["lora", "reference"] = "lora"
    hybrid_prompt: bool = False
    """LLaRA's hybrid prompt: item placeholder tokens embed a projection of SASRec's item
    embeddings."""


@dataclass
class RecLoraSettings:
    banks: int = 8
    temperature: float = 1.0
    mixing: Literal["weights", "outputs"] = "weights"
    router_hidden: int = 60


@dataclass
class GraphMoeSettings:
    experts: int = 4
    gate_hidden: int = 64


@dataclass
class TrainConfig:
    """The training loop (``lorarec train``)."""

    adapter: Literal["lora", "graphlora", "reclora", "ilora", "graphmoe"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Rank, alpha, dropout and target modules of every adapter type."""
    graph: GraphSettings = field(default_factory=GraphSettings)
    graphlora: GraphLoraSettings = field(default_factory=GraphLoraSettings)
    ilora: ILoraSettings = field(default_factory=ILoraSettings)
    reclora: RecLoraSettings = field(default_factory=RecLoraSettings)
    graphmoe: GraphMoeSettings = field(default_factory=GraphMoeSettings)
    micro_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: run ``epochs`` epochs)."""
    max_samples: int | None = None
    """Train on a fixed seeded subset of this many training samples (Few2Many); null: all."""
    max_length: int = 1024
    """Longest tokenised prompt + answer; longer prompts lose their oldest history items."""
    group_by_length: bool = False
    """Sort the samples of every window of ``length_window`` steps by their token length and cut
    them into steps (in a seeded order), so micro-batches hold samples of similar length and
    little padding is computed; every sample is still trained on once an epoch."""
    length_window: int = 16
    """Steps per window of ``group_by_length``."""
    gradient_checkpointing: bool = False
    """Keep only each decoder layer's input and recompute the layer in the backward pass (less
    activation memory for about a third more compute); ``lorarec plan`` says when it is needed."""
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    max_grad_norm: float = 1.0
    seed: int = 42
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    evaluate: bool = True
    """Evaluate the exported adapter on ``eval.split`` at the end."""
    log_samples: bool = False
    """Write the sample keys of every step to ``RUN_DIR/samples.jsonl`` (audits data order)."""


@dataclass
class DeepSpeedSection:
    config: str = "zero3"
    """A name in ``ds_configs/`` (zero2, zero3, zero3_offload, and ``_bf16`` variants) or a path."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Keys merged into the DeepSpeed config, dotted paths allowed
    (``zero_optimization.stage3_param_persistence_threshold: 0``)."""


@dataclass
class SlurmConfig:
    """``#SBATCH`` settings of the script ``lorarec train --emit-slurm`` writes."""

    partition: str | None = None
    time: str | None = None
    """Wall-clock limit in Slurm's syntax (``2-00:00:00``, ``12:00:00``)."""
    account: str | None = None
    cpus_per_task: int | None = None
    """CPUs per node for the launcher, its ranks, Ray and the graph shards (default: Slurm's)."""
    ray_port: int = 6379
    """Port of the Ray head (GCS) on the allocation's first node."""
    extra: list[str] = field(default_factory=list)
    """More ``#SBATCH`` options, one per item (``--constraint=h100``, ``--qos=high``)."""


@dataclass
class LaunchConfig:
    nodes: int = 1
    """Nodes of the run, for ``lorarec plan`` and ``lorarec train --emit-slurm`` (a launched
    run takes its nodes from the hostfile)."""
    ranks_per_node: int = 2
    """Processes per node: GPUs on a GPU node; on a CPU machine, 2 by default."""
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    master_port: int = 29500
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class GraphServiceConfig:
    """Where the trainer ranks take neighbourhoods and user histories from."""

    backend: Literal["ray", "inprocess"] = "ray"
    """``ray``: the sharded graph service (started by ``lorarec train``, or found on the cluster
    given with ``--ray-address``); ``inprocess``: each rank samples from its own copy of the
    graph (single-process use, tests). Both give identical samples."""
    shards: int = 2
    partitions: str | None = None
    """Partition directory (default ``$LORAREC_HOME/partitions/<digest>``); on a cluster it
    must be visible to every node that runs a shard."""
    prefetch: int = 2
    """Micro-batches (tokens, neighbourhoods, histories) built ahead in a background thread;
    0 builds each one inside its step."""
    retries: int = 10
    """Retries (exponential backoff, 0.05 s doubling to 2 s) of a request to a restarting shard."""
    cpus_per_shard: float = 0.25
    max_restarts: int = -1
    """Ray restarts of a shard actor (-1: without limit)."""


@dataclass
class MonitoringConfig:
    """Prometheus ``/metrics`` endpoints of the trainer ranks and graph shards."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Address the endpoints bind to: loopback by default; ``0.0.0.0`` lets a Prometheus on
    another machine scrape them (they are then announced under the node's host name)."""
    port: int = 0
    """Base port: rank r of a node serves on ``port + local rank``; 0 picks free ports. Either
    way the endpoints are announced in ``RUN_DIR/prometheus_targets.json``."""
    shard_port: int = 0
    """Base port of the graph shards started by ``lorarec train`` (shard k: ``shard_port + k``);
    0 picks free ports."""
    job: str | None = None
    """The ``job`` label of this run's series (default: ``<name>`` or ``<name>-<run dir>``)."""
    pushgateway: str | None = None
    """A Pushgateway URL to push the job summary to when the run ends (off by default)."""


@dataclass
class RunConfig:
    name: str = "run"
    out: str | None = None
    """Run directory; default ``runs/<name>``."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    graph_service: GraphServiceConfig = field(default_factory=GraphServiceConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    @property
    def job(self) -> str:
        """The ``job`` label of the run's metrics: ``monitoring.job``, or the run's name (with
        its directory's name when that differs, e.g. ``demo-20261122-101500``)."""
        if self.monitoring.job:
            return self.monitoring.job
        d = self.run_dir.name
        return self.name if d in (self.name, "") else f"{self.name}-{d}"


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate, return it."""
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"{p}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{p}: a config must be a mapping of keys, not {type(loaded).__name__}"
            )
        raw = loaded
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(RunConfig, raw, origin)
    check_adapter(cfg, origin)
    check_baselines(cfg.eval.baselines, cfg.data.task, cfg.train.max_samples, origin)
    if cfg.model.dtype == "auto":
        cfg.model.dtype = native_compute_dtype()
    return cfg


def native_compute_dtype() -> str:
    """``bfloat16`` where this machine computes in bf16 natively (a CUDA GPU with bf16, or a
    CPU with oneDNN's bf16 kernels), else ``float32`` (a CPU without them emulates bf16 at a
    small fraction of the fp32 rate)."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    mkldnn = torch.backends.mkldnn.is_available()
    return "bfloat16" if mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


CTR_ONLY_BASELINES = ("like_rate", "mf", "din")
"""Evaluation baselines trained on the like/dislike labels: ``ctr`` tasks only."""


def check_baselines(
    baselines: list[str], task: str, max_samples: int | None, origin: str = ""
) -> None:
    """Refuse evaluation baselines the task or the config cannot have, before anything is
    trained (``lorarec train`` evaluates after training)."""
    where = f"{origin}: " if origin else ""
    for name in baselines:
        if name in CTR_ONLY_BASELINES and not task.startswith("ctr"):
            raise ConfigError(
                f"{where}eval.baselines: {name} is a CTR baseline (trained on like/dislike "
                f"labels) and cannot score the {task} task; remove it or use data.task=ctr"
            )
        if name == "sasrec_subset" and max_samples is None:
            raise ConfigError(
                f"{where}eval.baselines: sasrec_subset needs train.max_samples (the size of "
                "the training subset the LLM trains on), which is null"
            )


def check_adapter(cfg: RunConfig, origin: str) -> None:
    """Relations between keys that the types cannot express."""
    t = cfg.train
    experts = {"ilora": t.ilora.experts, "graphmoe": t.graphmoe.experts}.get(t.adapter)
    if experts is not None and (experts < 1 or t.lora.rank % experts):
        raise ConfigError(
            f"{origin}: train.lora.rank={t.lora.rank} must be a multiple of "
            f"train.{t.adapter}.experts={experts} (each expert has rank r / E)"
        )
    if t.lora.collab_tokens and t.adapter != "lora":
        raise ConfigError(
            f"{origin}: train.lora.collab_tokens is plain LoRA's option (train.adapter: lora), "
            f"got train.adapter={t.adapter}"
        )
    if t.lora.collab_tokens and t.graph.init == "random":
        raise ConfigError(
            f"{origin}: train.lora.collab_tokens embeds pre-trained collaborative embeddings: "
            "train.graph.init must be lightgcn or mf, got random"
        )
    if t.adapter == "reclora" and t.reclora.banks < 1:
        raise ConfigError(f"{origin}: train.reclora.banks must be at least 1")
    if t.length_window < 1:
        raise ConfigError(
            f"{origin}: train.length_window must be at least 1, got {t.length_window}"
        )
    if t.adapter in ("graphlora", "graphmoe") and (
        not t.graph.fanouts or any(f == 0 or f < -1 for f in t.graph.fanouts)
    ):
        raise ConfigError(
            f"{origin}: train.graph.fanouts must be a non-empty list of positive counts or -1, "
            f"got {t.graph.fanouts}"
        )

    g = cfg.graph_service
    for key, low in (("shards", 1), ("prefetch", 0), ("retries", 0)):
        if getattr(g, key) < low:
            raise ConfigError(
                f"{origin}: graph_service.{key} must be at least {low}, got {getattr(g, key)}"
            )
    if g.cpus_per_shard < 0 or g.max_restarts < -1:
        raise ConfigError(
            f"{origin}: graph_service.cpus_per_shard must be >= 0 and max_restarts >= -1"
        )

    la = cfg.launch
    if la.nodes < 1 or la.ranks_per_node < 1:
        raise ConfigError(
            f"{origin}: launch.nodes and launch.ranks_per_node must be at least 1, got "
            f"{la.nodes} and {la.ranks_per_node}"
        )
    if not 1024 <= la.slurm.ray_port <= 65535:
        raise ConfigError(
            f"{origin}: launch.slurm.ray_port must be a port from 1024 to 65535, "
            f"got {la.slurm.ray_port}"
        )
    bad = [e for e in la.slurm.extra if not e.startswith("--") or "\n" in e]
    if bad:
        raise ConfigError(
            f"{origin}: launch.slurm.extra items must be single sbatch options starting with "
            f"'--', got {bad[0]!r}"
        )

    m = cfg.monitoring
    for key, count in (("port", cfg.launch.ranks_per_node), ("shard_port", g.shards)):
        base = getattr(m, key)
        if base != 0 and not (1024 <= base and base + count - 1 <= 65535):
            raise ConfigError(
                f"{origin}: monitoring.{key}={base} must be 0 (free ports) or a base port "
                f"from 1024 with {count} ports after it up to 65535"
            )
    if not m.host.strip():
        raise ConfigError(f"{origin}: monitoring.host must be an address, got {m.host!r}")
    if m.job is not None and not m.job.strip():
        raise ConfigError(f"{origin}: monitoring.job must not be empty")
    if m.pushgateway is not None and not m.pushgateway.startswith(("http://", "https://")):
        raise ConfigError(
            f"{origin}: monitoring.pushgateway must be an http:// or https:// URL, "
            f"got {m.pushgateway!r}"
        )


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw config dict."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parsed


def from_dict(cls: type, raw: Any, origin: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: {prefix.rstrip('.') or 'config'} must be a mapping, got {_typename(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            full = prefix + str(key)
            valid = [prefix + name for name in fields]
            near = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (valid keys: {', '.join(valid)})"
            raise ConfigError(f"{origin}: unknown key {full!r}{hint}")
    kwargs = {}
    for name in fields:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], origin, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, origin: str, key: str) -> Any:
    origin_tp = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, origin, key + ".")
    if origin_tp in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, origin, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{origin}: {key} must be {_describe(tp)}, got {_show(value)}")
    if origin_tp is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"{origin}: {key} must be one of {', '.join(map(repr, choices))}, "
                f"got {_show(value)}{hint}"
            )
        return value
    if origin_tp is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: {key} must be {_describe(tp)}, got {_show(value)}")
        return [_coerce(item_tp, v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin_tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a mapping, got {_show(value)}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(val_tp, v, origin, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema bug, not user error
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{origin}: {key} must be {_describe(tp)}, got {_show(value)}")


def _describe(tp: Any) -> str:
    origin_tp = typing.get_origin(tp)
    if origin_tp in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin_tp is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin_tp is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _typename(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_typename(value)})"


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (the same schema :func:`load_config` reads)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_config(cfg: RunConfig, path: str | Path) -> None:
    from lorarec.core.io import write_text_atomic

    write_text_atomic(path, dump_config(cfg))
