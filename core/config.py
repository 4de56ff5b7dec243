"""Run configs: one YAML file per run, validated against typed dataclasses.

* Unknown keys are rejected, naming the nearest valid key; so are duplicate keys.
* Wrong types name the key and the expected type.
* Every number has a valid range (``metadata={"range": Range(...)}`` on its field, checked by
  :func:`from_dict`); values outside it name the key, the value and the range.
* Every error says where the value came from: ``FILE:LINE`` of the key in the config file, or
  ``override key=value`` when it came from the command line.
* ``key.sub=value`` overrides from the command line are applied before validation, with the
  value parsed as YAML (``train.lr=1e-4``, ``eval.baselines=[random,sasrec]``); a mapping
  given for a section merges into it (``train={lr: 1e-4}`` is ``train.lr=1e-4``).
* :func:`dump_config` writes the fully resolved config (every default filled in).

Later parts of the system add sections here; every section is a dataclass, so one schema
describes the whole file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lorarec.core.errors import ConfigError
from lorarec.core.files import _key, _read_text, read_json_object


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric config key (of each item, for a list of numbers)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    special: tuple[tuple[Any, str], ...] = ()
    """Values valid outside the range, with their meaning: ``((0, "free ports"),)``."""

    def admits(self, v: float) -> bool:
        if any(v == value for value, _ in self.special):
            return True
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def describe(self, integer: bool) -> str:
        lo = (
            ("[", self.ge)
            if self.ge is not None
            else ("(", self.gt)
            if self.gt is not None
            else None
        )
        hi = (
            ("]", self.le)
            if self.le is not None
            else (")", self.lt)
            if self.lt is not None
            else None
        )
        if lo and hi:
            if integer and lo[0] == "[" and hi[0] == "]":
                text = f"from {_bound(lo[1])} to {_bound(hi[1])}"
            else:
                text = f"in {lo[0]}{_bound(lo[1])}, {_bound(hi[1])}{hi[0]}"
        elif lo:
            if integer and lo[0] == "[":
                text = f"at least {_bound(lo[1])}"
            else:
                text = f"{'>=' if lo[0] == '[' else '>'} {_bound(lo[1])} and finite"
        elif hi:
            text = f"{'<=' if hi[0] == ']' else '<'} {_bound(hi[1])}"
            text += "" if integer else " and finite"
        else:
            text = "finite"
        specials = "".join(f"{value} ({meaning}) or " for value, meaning in self.special)
        return f"must be {specials}{text}"


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def num(default: Any = None, **bounds: Any) -> Any:
    """A numeric field with its valid range (``lr: float = num(5e-4, gt=0)``)."""
    return field(default=default, metadata={"range": Range(**bounds)})


SEED = {"ge": 0, "le": 2**32 - 1}
"""Seeds: numpy's generators take 0 to 2**32 - 1."""
PORT = {"ge": 1, "le": 65535}
FREE_PORT = {"ge": 1, "le": 65535, "special": ((0, "free ports"),)}
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
MODULE_PATTERN = r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*"

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
    seed: int = num(42, **SEED)
    history_short: int = num(10, ge=1)
    """Items of history shown to the LLM as titles."""
    history_long: int = num(50, ge=1)
    """Items of history kept for sequence encoders."""
    num_candidates: int = num(20, ge=1)
    min_history: int = num(2, ge=1)
    """A training sample needs at least this many earlier items."""
    positive_rating: float = num(4.0)
    """CTR label: rating >= this is positive."""
    shard_size: int = num(10000, ge=1)
    """Samples per webdataset tar shard."""
    item_noun: str = "movie"
    """What the prompts call an item (``song``, ``game``, ``product``)."""
    item_noun_plural: str = "movies"
    verb: str = "watch"
    """What a user does with an item, in the prompts (``listen to``, ``play``, ``buy``)."""
    verb_past: str = "watched"
    """The same verb in the past tense (``listened to``, ``played``, ``bought``)."""
    answer: Literal["title", "index"] = "title"
    """``next_item``: what the LLM answers, the target's title (LLaRA) or the letter the prompt
    lists it under among the candidates, ``(A) title, (B) title, ...`` (LlamaRec's verbaliser:
    every candidate's score is a one-token continuation of one prompt)."""

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

    hidden_size: int = num(64, ge=1)
    intermediate_size: int = num(128, ge=1)
    num_hidden_layers: int = num(2, ge=1)
    num_attention_heads: int = num(4, ge=1)
    """Must divide ``hidden_size``, into an even head size (rotary embeddings rotate pairs)."""
    num_key_value_heads: int = num(2, ge=1)
    """Must divide ``num_attention_heads``."""
    max_position_embeddings: int = num(4096, ge=1)
    seed: int = num(0, **SEED)


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

    hidden_size: int = num(64, ge=1)
    num_layers: int = num(2, ge=1)
    num_heads: int = num(2, ge=1)
    """Must divide ``hidden_size``."""
    dropout: float = num(0.2, ge=0, lt=1)
    max_len: int = num(50, ge=1)
    epochs: int = num(60, ge=1)
    batch_size: int = num(128, ge=1)
    lr: float = num(1e-3, gt=0)
    weight_decay: float = num(0.0, ge=0)
    seed: int = num(42, **SEED)


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
    llm_limit: int | None = num(200, ge=1)
    """Samples the LLM is evaluated on (a fixed seeded subset); null for all."""
    max_new_tokens: int = num(48, ge=1)
    bootstrap: int = num(1000, ge=1)
    """Resamples of the bootstrap confidence intervals."""
    seed: int = num(0, **SEED)


@dataclass
class LoraConfig:
    rank: int = num(8, ge=1)
    alpha: float = num(16.0, gt=0)
    dropout: float = num(0.05, ge=0, lt=1)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={
            "items": (1, None, "must name at least one module"),
            "pattern": (MODULE_PATTERN, "is not a module name (e.g. q_proj, self_attn.v_proj)"),
        },
    )
    """Names (or dotted name suffixes) of the backbone's modules that get the adapter; checked
    against the backbone's modules when they are known without loading it (``tiny-random``
    and the presets; ``lorarec plan`` builds the backbone and checks any)."""
    collab_tokens: bool = False
    """Plain LoRA given the collaborative embeddings of the prompt's user and items as input
    tokens at their placeholders (CoLLM's design; ``train.adapter: lora`` only): the row that
    separates a graph adapter's structure from the collaborative signal it carries."""


@dataclass
class GraphSettings:
    """The graph network of GraphLoRA and GraphMoE, and the neighbourhoods it runs on."""

    network: Literal["lightgcn", "gcn", "ngcf"] = "lightgcn"
    layers: int = num(2, ge=1)
    node_dim: int = num(64, ge=1)
    fanouts: list[int] = field(
        default_factory=lambda: [10, 5],
        metadata={"range": Range(ge=1, special=((-1, "all"),)), "items": (1, None, None)},
    )
    """Neighbours kept per node at each hop of the batch's sampled subgraph (-1: all)."""
    init: Literal["lightgcn", "mf", "label_mf", "random"] = "lightgcn"
    """Node embeddings start from a collaborative model pre-trained on the training graph (BPR
    LightGCN or MF), or, on a CTR task, from a logistic MF trained on its like labels."""
    init_epochs: int = num(20, ge=1)
    text_features: bool = False
    """Concatenate MiniLM embeddings of the item titles to the node embeddings."""


@dataclass
class GraphLoraSettings:
    a: float = num(1.0)
    b: float = num(0.1)
    layers: list[int] | None = num(None, ge=0)
    """Decoder layers that take the graph term (null: every adapted layer)."""


@dataclass
class ILoraSettings:
    experts: int = num(4, ge=1)
    """Must divide ``train.lora.rank`` (each expert has rank r / E)."""
    gate_hidden: int = num(64, ge=1)
    scale: Literal["lora", "reference"] = "lora"
    hybrid_prompt: bool = False
    """LLaRA's hybrid prompt: item placeholder tokens embed a projection of SASRec's item
    embeddings."""


@dataclass
class RecLoraSettings:
    banks: int = num(8, ge=1)
    temperature: float = num(1.0, gt=0)
    mixing: Literal["weights", "outputs"] = "weights"
    router_hidden: int = num(60, ge=1)


@dataclass
class GraphMoeSettings:
    experts: int = num(4, ge=1)
    """Must divide ``train.lora.rank``."""
    gate_hidden: int = num(64, ge=1)


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
    micro_batch_size: int = num(2, ge=1)
    gradient_accumulation_steps: int = num(1, ge=1)
    epochs: int = num(1, ge=1)
    max_steps: int | None = num(None, ge=1)
    """Stop after this many optimizer steps (null: run ``epochs`` epochs)."""
    max_samples: int | None = num(None, ge=1)
    """Train on a fixed seeded subset of this many training samples (Few2Many); null: all."""
    max_length: int = num(1024, ge=1)
    """Longest tokenised prompt + answer; longer prompts lose their oldest history items."""
    group_by_length: bool = False
    """Sort the samples of every window of ``length_window`` steps by their token length and cut
    them into steps (in a seeded order), so micro-batches hold samples of similar length and
    little padding is computed; every sample is still trained on once an epoch."""
    length_window: int = num(16, ge=1)
    """Steps per window of ``group_by_length``."""
    gradient_checkpointing: bool = False
    """Keep only each decoder layer's input and recompute the layer in the backward pass (less
    activation memory for about a third more compute); ``lorarec plan`` says when it is needed."""
    lr: float = num(5e-4, gt=0)
    weight_decay: float = num(0.0, ge=0)
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999],
        metadata={"range": Range(ge=0, lt=1), "items": (2, 2, None)},
    )
    """Adam's beta1 and beta2."""
    warmup_steps: int = num(10, ge=0)
    min_lr_ratio: float = num(0.1, ge=0, le=1)
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    max_grad_norm: float = num(1.0, ge=0)
    """Gradient clipping norm (0: no clipping)."""
    seed: int = num(42, **SEED)
    checkpoint_every: int = num(50, ge=1)
    """Optimizer steps between checkpoints."""
    keep_checkpoints: int = num(2, ge=1, special=((0, "keep all"),))
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
    cpus_per_task: int | None = num(None, ge=1)
    """CPUs per node for the launcher, its ranks, Ray and the graph shards (default: Slurm's)."""
    ray_port: int = num(6379, ge=1024, le=65535)
    """Port of the Ray head (GCS) on the allocation's first node."""
    extra: list[str] = field(default_factory=list)
    """More ``#SBATCH`` options, one per item (``--constraint=h100``, ``--qos=high``)."""


DEFAULT_MASTER_PORT = 29500
"""Rank 0's rendezvous port on several nodes when ``launch.master_port`` is 0."""


@dataclass
class LaunchConfig:
    nodes: int = num(1, ge=1)
    """Nodes of the run, for ``lorarec plan`` and ``lorarec train --emit-slurm`` (a launched
    run takes its nodes from the hostfile)."""
    ranks_per_node: int = num(2, ge=1)
    """Processes per node: GPUs on a GPU node; on a CPU machine, 2 by default."""
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    master_port: int = num(0, ge=1, le=65535, special=((0, "a free port"),))
    """Rendezvous port of rank 0. 0: a free port on a single node (the printed launcher command
    shows it), 29500 on several nodes."""
    heartbeat_timeout: float = num(60.0, ge=0, special=((0, "no watch"),))
    """Seconds a rank may go without a heartbeat (its state file, rewritten every
    ``heartbeat_timeout / 6`` s, at most 10) before ``lorarec train`` takes its host for lost:
    it then stops every rank on every host (``RUN_DIR/ranks/stop``) and names the host and the
    resume command. A rank that fails does the same at once. 0: no watch."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class GraphServiceConfig:
    """Where the trainer ranks take neighbourhoods and user histories from."""

    backend: Literal["ray", "inprocess"] = "ray"
    """``ray``: the sharded graph service (started by ``lorarec train``, or found on the cluster
    given with ``--ray-address``); ``inprocess``: each rank samples from its own copy of the
    graph (single-process use, tests). Both give identical samples."""
    shards: int = num(2, ge=1)
    partitions: str | None = None
    """Partition directory (default ``$LORAREC_HOME/partitions/<digest>``); on a cluster it
    must be visible to every node that runs a shard."""
    prefetch: int = num(2, ge=0)
    """Micro-batches (tokens, neighbourhoods, histories) built ahead in a background thread;
    0 builds each one inside its step."""
    retries: int = num(10, ge=0)
    """Retries (exponential backoff, 0.05 s doubling to 2 s) of a request to a restarting shard."""
    cpus_per_shard: float = num(0.25, ge=0)
    max_restarts: int = num(-1, ge=0, special=((-1, "without limit"),))
    """Ray restarts of a shard actor (-1: without limit)."""


@dataclass
class MonitoringConfig:
    """Prometheus ``/metrics`` endpoints of the trainer ranks and graph shards."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Address the endpoints bind to: loopback by default; ``0.0.0.0`` lets a Prometheus on
    another machine scrape them (they are then announced under the node's host name)."""
    port: int = num(0, **FREE_PORT)
    """Base port: rank r of a node serves on ``port + local rank``; 0 picks free ports. Either
    way the endpoints are announced in ``RUN_DIR/prometheus_targets.json``."""
    shard_port: int = num(0, **FREE_PORT)
    """Base port of the graph shards started by ``lorarec train`` (shard k: ``shard_port + k``);
    0 picks free ports."""
    job: str | None = None
    """The ``job`` label of this run's series (default: ``<name>`` or ``<name>-<run dir>``)."""
    pushgateway: str | None = None
    """A Pushgateway URL to push the job summary to when the run ends (off by default)."""


@dataclass
class RunConfig:
    name: str = field(
        default="run",
        metadata={
            "pattern": (
                NAME_PATTERN,
                "is not a plain name (letters, digits, '.', '_' and '-', starting with a letter "
                "or digit: it names the run directory runs/<name>; set out= for another place)",
            )
        },
    )
    """The run's name: its directory ``runs/<name>`` (unless ``out`` says otherwise)."""
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


class Source:
    """Where each value of a raw config came from: ``FILE:LINE`` of its key in the config file,
    or the ``override key=value`` that set it (or a section above it)."""

    def __init__(self, file: str | None = None):
        self.file = file
        self.lines: dict[tuple, int] = {}
        self.overrides: dict[tuple, str] = {}

    def set_by_override(self, path: tuple, label: str) -> None:
        for known in [k for k in self.overrides if k[: len(path)] == path]:
            del self.overrides[known]  # replaced along with their section
        self.overrides[path] = label

    def known(self, path: tuple) -> bool:
        return path in self.lines or any(
            path[:n] in self.overrides for n in range(len(path), 0, -1)
        )

    def where(self, path: tuple | list = ()) -> str:
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overrides:
                return self.overrides[path[:n]]
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{self.file}:{self.lines[path[:n]]}"
        return self.file if self.file is not None else "<defaults>"


def _as_source(src: Source | str | None) -> Source:
    return src if isinstance(src, Source) else Source(src)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate, return it."""
    src = Source(None if path is None else str(path))
    try:
        raw: dict[str, Any] = {} if path is None else _read_config_file(Path(path), src)
        for item in overrides:
            apply_override(raw, item, src)
        cfg = from_dict(RunConfig, raw, src)
        check_adapter(cfg, src)
        check_deepspeed(cfg, src)
    except RecursionError:
        raise ConfigError(
            f"{src.where()}: nested too deeply (or a YAML alias that contains itself)"
        ) from None
    check_baselines(
        cfg.eval.baselines, cfg.data.task, cfg.train.max_samples, src.where(("eval", "baselines"))
    )
    if cfg.model.dtype == "auto":
        cfg.model.dtype = native_compute_dtype()
    return cfg


def _read_config_file(p: Path, src: Source) -> dict[str, Any]:
    loaded = load_yaml(_read_text(p, "config file"), str(p), src.lines)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: a config must be a mapping of keys, not {_typename(loaded)}")
    return loaded


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; a scalar it cannot build (``!!float abc``) is a YAML error at the
    scalar's line, not a ValueError."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            shown = repr(node.value)[:40] if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag} {shown}: {exc}", node.start_mark
            ) from None


def load_yaml(
    text: str,
    where: str,
    lines: dict[tuple, int] | None = None,
    base: tuple = (),
    is_file: bool = True,
) -> Any:
    """Parse one YAML document. Duplicate keys are refused (naming the key path from ``base``
    and both lines); ``lines`` receives the line of every key and list item by path.
    ``where`` is the file (errors say ``FILE:LINE``) or, with ``is_file=False``, an
    override's label (no lines)."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character first
        node = loader.get_single_node()
        if node is None:
            return None
        _walk(loader, node, base, {} if lines is None else lines, where, is_file, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}" if is_file and mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "").split())
        raise ConfigError(f"{where}{at}: not valid YAML ({problem})") from None
    except yaml.reader.ReaderError as exc:
        at = f":{text.count(chr(10), 0, exc.position) + 1}" if is_file else ""
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"{where}{at}: not valid YAML (unacceptable character #x{char:04x})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _walk(loader, node, path: tuple, lines: dict, where: str, is_file: bool, seen: set) -> None:
    """Record the line of every key and list item under ``node``; refuse duplicate keys. A node
    reached again through an alias is not walked again (its keys take the alias's line)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue  # merged keys may repeat explicit ones; complex keys: refused later
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                at = f":{line}" if is_file else ""
                again = f" (first at line {first[key]})" if is_file else ""
                name = _key(path + (str(key_node.value),))  # as written: "yes", not True
                raise ConfigError(f"{where}{at}: duplicate key {name!r}{again}")
            first[key] = line
            lines.setdefault(path + (key,), line)
            _walk(loader, value_node, path + (key,), lines, where, is_file, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(path + (i,), item.start_mark.line + 1)
            _walk(loader, item, path + (i,), lines, where, is_file, seen)


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


def check_adapter(cfg: RunConfig, src: Source | str) -> None:
    """Relations between keys that the types and ranges cannot express."""
    src = _as_source(src)

    def fail(path: tuple, message: str) -> typing.NoReturn:
        raise ConfigError(f"{src.where(path)}: {message}")

    t = cfg.train
    experts = {"ilora": t.ilora.experts, "graphmoe": t.graphmoe.experts}.get(t.adapter)
    if experts is not None and t.lora.rank % experts:
        fail(
            ("train", "lora", "rank"),
            f"train.lora.rank: {t.lora.rank} must be a multiple of train.{t.adapter}.experts "
            f"({experts}) (each expert has rank r / E)",
        )
    if t.lora.collab_tokens and t.adapter != "lora":
        fail(
            ("train", "lora", "collab_tokens"),
            "train.lora.collab_tokens is plain LoRA's option (train.adapter: lora), "
            f"got train.adapter={t.adapter}",
        )
    if t.lora.collab_tokens and t.graph.init == "random":
        fail(
            ("train", "graph", "init"),
            "train.lora.collab_tokens embeds pre-trained collaborative embeddings: "
            "train.graph.init must be lightgcn, mf or label_mf, got random",
        )
    from lorarec.trainer.prompts import INDEX_LABELS

    if cfg.data.answer == "index" and cfg.data.task != "next_item":
        fail(
            ("data", "answer"),
            f"data.answer: index labels next-item candidates; data.task={cfg.data.task} has none",
        )
    if cfg.data.answer == "index" and cfg.data.num_candidates > len(INDEX_LABELS):
        fail(
            ("data", "answer"),
            f"data.answer: index has {len(INDEX_LABELS)} letters for the candidates, "
            f"data.num_candidates is {cfg.data.num_candidates}",
        )
    if t.graph.init == "label_mf" and not cfg.data.task.startswith("ctr"):
        fail(
            ("train", "graph", "init"),
            "train.graph.init: label_mf is trained on like labels and needs data.task=ctr, "
            f"got data.task={cfg.data.task}",
        )

    tiny = cfg.model.tiny
    heads = ("model", "tiny", "num_attention_heads")
    if tiny.hidden_size % tiny.num_attention_heads:
        fail(
            heads,
            f"model.tiny.num_attention_heads: {tiny.num_attention_heads} must divide "
            f"model.tiny.hidden_size ({tiny.hidden_size})",
        )
    if (tiny.hidden_size // tiny.num_attention_heads) % 2:
        fail(
            heads,
            f"model.tiny.num_attention_heads: {tiny.num_attention_heads} gives heads of "
            f"{tiny.hidden_size // tiny.num_attention_heads} dimensions (model.tiny.hidden_size "
            f"{tiny.hidden_size} / heads), which must be even (rotary embeddings rotate pairs)",
        )
    if tiny.num_attention_heads % tiny.num_key_value_heads:
        fail(
            ("model", "tiny", "num_key_value_heads"),
            f"model.tiny.num_key_value_heads: {tiny.num_key_value_heads} must divide "
            f"model.tiny.num_attention_heads ({tiny.num_attention_heads})",
        )
    s = cfg.sasrec
    if s.hidden_size % s.num_heads:
        fail(
            ("sasrec", "num_heads"),
            f"sasrec.num_heads: {s.num_heads} must divide sasrec.hidden_size ({s.hidden_size})",
        )

    known = _backbone_shape(cfg)
    if known is not None:
        modules, layers = known
        for i, name in enumerate(t.lora.target_modules):
            if name.rsplit(".", 1)[-1] not in modules:
                fail(
                    ("train", "lora", "target_modules", i),
                    f"train.lora.target_modules[{i}]: {name!r} is not a module of "
                    f"{cfg.model.backbone} (its modules: {', '.join(modules)})",
                )
        for i, layer in enumerate(t.graphlora.layers or []):
            if layer >= layers:
                fail(
                    ("train", "graphlora", "layers", i),
                    f"train.graphlora.layers[{i}]: {layer} is out of range ({cfg.model.backbone} "
                    f"has {layers} decoder layers: 0 to {layers - 1})",
                )

    g = cfg.graph_service
    la = cfg.launch
    bad = [e for e in la.slurm.extra if not e.startswith("--") or "\n" in e]
    if bad:
        fail(
            ("launch", "slurm", "extra", la.slurm.extra.index(bad[0])),
            "launch.slurm.extra items must be single sbatch options starting with "
            f"'--', got {bad[0]!r}",
        )

    m = cfg.monitoring
    gateway = src.where(("monitoring", "pushgateway"))
    for key, count in (("port", cfg.launch.ranks_per_node), ("shard_port", g.shards)):
        base = getattr(m, key)
        if base != 0 and not (1024 <= base and base + count - 1 <= 65535):
            fail(
                ("monitoring", key),
                f"monitoring.{key}={base} must be 0 (free ports) or a base port from 1024 with "
                f"{count} ports after it up to 65535",
            )
    if not m.host.strip():
        fail(("monitoring", "host"), f"monitoring.host must be an address, got {m.host!r}")
    if m.job is not None and not m.job.strip():
        fail(("monitoring", "job"), "monitoring.job must not be empty")
    if m.pushgateway is not None:
        from urllib.parse import urlsplit

        try:
            url = urlsplit(m.pushgateway)
        except ValueError as exc:  # "http://[::1": not a URL at all
            raise ConfigError(f"{gateway}: monitoring.pushgateway is not a URL ({exc})") from None
        if url.username is not None or url.password is not None:
            # never written to config.yaml or echoed in an error
            shown = url._replace(netloc="***@" + url.netloc.rsplit("@", 1)[1]).geturl()
            raise ConfigError(
                f"{gateway}: monitoring.pushgateway {shown}: credentials do not belong in the "
                "URL (config.yaml and logs would show them); set LORAREC_PUSHGATEWAY_USER and "
                "LORAREC_PUSHGATEWAY_PASSWORD instead"
            )
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"{gateway}: monitoring.pushgateway must be an http:// or https:// URL, "
                f"got {m.pushgateway!r}"
            )


def _backbone_shape(cfg: RunConfig) -> tuple[tuple[str, ...], int] | None:
    """The module names and decoder layers of ``model.backbone`` where they are known without
    loading it (``tiny-random``, a preset); None otherwise."""
    from lorarec.core.presets import DECODER_MODULES, PRESETS, preset_shape

    if cfg.model.backbone == "tiny-random":
        return DECODER_MODULES["llama"], cfg.model.tiny.num_hidden_layers
    if cfg.model.backbone in PRESETS:
        return preset_shape(cfg.model.backbone)
    return None


# ----------------------------------------------------------------------- DeepSpeed config

DS_CONFIG_DIR = Path(__file__).resolve().parent.parent / "ds_configs"
DS_SECTIONS = {
    "bf16": " (e.g. {enabled: true})",
    "fp16": " (e.g. {enabled: true})",
    "zero_optimization": " (e.g. {stage: 3})",
    "zero_optimization.offload_optimizer": " (e.g. {device: cpu})",
    "zero_optimization.offload_param": " (e.g. {device: cpu})",
    "data_types": " (e.g. {grad_accum_dtype: fp32})",
}
"""DeepSpeed config keys that must be objects (lorarec reads or extends them)."""
RUN_DECIDED = {
    "train_batch_size": "train.micro_batch_size and train.gradient_accumulation_steps",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "gradient_clipping": "train.max_grad_norm",
    "optimizer": "train.lr, train.betas and train.weight_decay",
}
"""DeepSpeed keys every run sets from its own config (an override of them would be lost)."""
_ABSENT = object()


def ds_config_path(name: str) -> Path:
    """The file of ``deepspeed.config``: a name in ``ds_configs/`` or a path."""
    if not name.strip():
        raise ConfigError("deepspeed.config: empty; name a config of ds_configs/ or a file")
    path = Path(name)
    try:
        if path.suffix == ".json" or path.exists():
            if not path.is_file():
                raise ConfigError(f"deepspeed.config: {path} not found")
            return path
        shipped = (DS_CONFIG_DIR / f"{name}.json").is_file()
    except (OSError, ValueError) as exc:  # a name too long for a path, or with a NUL byte
        raise ConfigError(f"deepspeed.config: {name!r} is not a usable path ({exc})") from None
    path = DS_CONFIG_DIR / f"{name}.json"
    if not shipped:
        known = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))
        raise ConfigError(
            f"deepspeed.config: unknown config {name!r} (shipped: {', '.join(known)})"
        )
    return path


def read_ds_config(name: str, where: str = "") -> tuple[Path, dict[str, Any]]:
    """The DeepSpeed config file ``name`` (``deepspeed.config``), read and checked: a JSON
    object without duplicate keys whose sections and ZeRO stage are valid. ``where`` (where
    ``deepspeed.config`` is set) prefixes errors."""
    at = f"{where}: " if where else ""
    try:
        path = ds_config_path(name)
        ds, lines = read_json_object(path, "DeepSpeed config")

        def line_of(dotted: str) -> str:
            parts = tuple(dotted.split("."))
            for n in range(len(parts), 0, -1):
                if parts[:n] in lines:
                    return f"{path}:{lines[parts[:n]]}"
            return str(path)

        check_ds_dict(ds, "", line_of)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith("deepspeed.config"):
            message = f"deepspeed.config: {message}"
        raise ConfigError(f"{at}{message}") from None
    return path, ds


def merge_ds_override(ds: dict, key: str, value: Any, where: str, trail: tuple = ()) -> None:
    """Set the dotted ``key`` of DeepSpeed config ``ds`` to ``value`` (a mapping merges into a
    mapping); ``trail`` is the path above ``key``, for errors."""
    parts = str(key).split(".")
    full = "deepspeed.overrides." + ".".join(trail + tuple(parts))
    if any(not part for part in parts):
        raise ConfigError(f"{where}: {full}: empty part in the dotted key {str(key)!r}")
    node = ds
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            above = ".".join(trail + tuple(parts[: i + 1]))
            raise ConfigError(f"{where}: {full}: cannot be set, {above} is {_show(child)}")
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            merge_ds_override(node[last], k, v, where, trail + tuple(parts))
    else:
        node[last] = value


def _dig(ds: dict, dotted: str) -> Any:
    node: Any = ds
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_ds_dict(ds: dict, label: str, where: typing.Callable[[str], str]) -> None:
    """The DeepSpeed config keys lorarec relies on: sections are objects, ``enabled`` flags
    true or false, the ZeRO stage 0 to 3. ``label`` prefixes key names in errors; ``where(key)``
    says where a dotted key is set."""
    for dotted, hint in DS_SECTIONS.items():
        value = _dig(ds, dotted)
        if value is not _ABSENT and not isinstance(value, dict):
            raise ConfigError(
                f"{where(dotted)}: {label}{dotted}: {_brief(value)} must be a mapping{hint}"
            )
    for dotted in ("bf16.enabled", "fp16.enabled"):
        value = _dig(ds, dotted)
        if value is not _ABSENT and not isinstance(value, bool):
            raise ConfigError(
                f"{where(dotted)}: {label}{dotted}: {_brief(value)} must be true or false"
            )
    dotted = "zero_optimization.stage"
    stage = _dig(ds, dotted)
    if stage is not _ABSENT:
        if not isinstance(stage, int) or isinstance(stage, bool):
            raise ConfigError(
                f"{where(dotted)}: {label}{dotted}: {_brief(stage)} must be an integer"
            )
        if not 0 <= stage <= 3:
            raise ConfigError(
                f"{where(dotted)}: {label}{dotted}: {stage} is out of range (must be from 0 to 3)"
            )


def check_deepspeed(cfg: RunConfig, src: Source | str) -> None:
    """``deepspeed.overrides`` (JSON values, valid sections and stage, no keys the run sets
    itself) and the ``deepspeed.config`` file, checked when the config is read."""
    src = _as_source(src)
    base = ("deepspeed", "overrides")
    _check_json_value(cfg.deepspeed.overrides, base, src, set())
    for key in cfg.deepspeed.overrides:
        top = str(key).split(".")[0]
        if top in RUN_DECIDED:
            raise ConfigError(
                f"{src.where(base + (key,))}: deepspeed.overrides.{key}: set by every run from "
                f"{RUN_DECIDED[top]}; set those instead"
            )
    merged: dict[str, Any] = {}
    for key, value in cfg.deepspeed.overrides.items():
        merge_ds_override(merged, key, value, src.where(base + (key,)))

    def where(dotted: str) -> str:
        parts = tuple(dotted.split("."))
        for cut in range(len(parts), 0, -1):  # nested keys, or the dotted key that set it
            for path in (base + parts[:cut], base + (".".join(parts[:cut]),)):
                if src.known(path):
                    return src.where(path)
        return src.where(base)

    check_ds_dict(merged, "deepspeed.overrides.", where)
    _, ds = read_ds_config(cfg.deepspeed.config, src.where(("deepspeed", "config")))
    for key, value in cfg.deepspeed.overrides.items():
        merge_ds_override(ds, key, json.loads(json.dumps(value)), src.where(base + (key,)))


def _check_json_value(value: Any, path: tuple, src: Source, above: set) -> None:
    if isinstance(value, (dict, list)):
        if id(value) in above:
            raise ConfigError(f"{src.where(path)}: {_key(path)} contains itself (a YAML alias)")
        above = above | {id(value)}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(value, dict) and not isinstance(k, str):
                raise ConfigError(
                    f"{src.where(path)}: {_key(path)}: key {_brief(k)} must be a string"
                )
            _check_json_value(v, path + (k,), src, above)
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(
            f"{src.where(path)}: {_key(path)}: {_show(value)} is not a JSON value (null, true, "
            "false, a number, a string, a list or a mapping)"
        )


# ------------------------------------------------------------------------------ overrides


def _override_label(item: str) -> str:
    shown = re.sub(r"(://)[^/@\s]*@", r"\1***@", item)  # never echo URL credentials
    return f"override {shown}" if shown.isprintable() else f"override {shown!r}"


def apply_override(raw: dict[str, Any], item: str, src: Source | None = None) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw config dict; a
    mapping merges into a mapping. ``src`` records which keys the override set."""
    key, sep, value = item.partition("=")
    parts = key.split(".")
    if not sep or not key or any(not part for part in parts):
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    label = _override_label(item)
    parsed = load_yaml(value, label, None, tuple(parts), is_file=False) if value != "" else ""
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {_key(parts[: i + 1])} is {_show(child)}, not a section")
        node = child
    _merge(node, parts[-1], parsed, tuple(parts), src, label)


def _merge(node: dict, key: Any, value: Any, path: tuple, src: Source | None, label: str) -> None:
    old = node.get(key)
    if isinstance(value, dict) and value and isinstance(old, dict):
        node[key] = old = dict(old)  # the file's mapping may be shared through an alias
        for k, v in value.items():
            _merge(old, k, v, path + (k,), src, label)
    else:
        node[key] = value
        if src is not None:
            src.set_by_override(path, label)


# ------------------------------------------------------------------------------- schema


def from_dict(cls: type, raw: Any, src: Source | str, path: tuple = ()) -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys, wrong types and values
    outside a field's range; ``src`` says where each value came from."""
    src = _as_source(src)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{src.where(path)}: {_key(path) or 'config'} must be a mapping, got {_show(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            full = _key(path + (str(key),))
            valid = [_key(path + (name,)) for name in fields]
            near = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (valid keys: {', '.join(valid)})"
            raise ConfigError(f"{src.where(path + (key,))}: unknown key {full!r}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], src, path + (name,))
            _check_field(f, kwargs[name], src, path + (name,))
    return cls(**kwargs)


def _check_field(f: dataclasses.Field, value: Any, src: Source, path: tuple) -> None:
    """The field's ``items`` (list length), ``range`` (numbers) and ``pattern`` (strings)."""
    if value is None:
        return
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    if "items" in f.metadata and isinstance(value, list):
        low, high, message = f.metadata["items"]
        if len(value) < low or (high is not None and len(value) > high):
            if message is None:
                s = "" if low == 1 else "s"
                message = (
                    f"must have exactly {low} item{s}"
                    if low == high
                    else f"must have at least {low} item{s}"
                    if high is None
                    else f"must have {low} to {high} items"
                )
            raise ConfigError(f"{src.where(path)}: {_key(path)}: {_brief(value)} {message}")
    rng = f.metadata.get("range")
    pattern = f.metadata.get("pattern")
    for i, v in items:
        at = path if i is None else path + (i,)
        if rng is not None and not rng.admits(v):
            raise ConfigError(
                f"{src.where(at)}: {_key(at)}: {v!r} is out of range "
                f"({rng.describe(isinstance(v, int))})"
            )
        if pattern is not None and not re.fullmatch(pattern[0], v):
            raise ConfigError(f"{src.where(at)}: {_key(at)}: {v!r} {pattern[1]}")


def _coerce(tp: Any, value: Any, src: Source, path: tuple) -> Any:
    key = _key(path)
    origin_tp = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, src, path)
    if origin_tp in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, src, path)
            except ConfigError:
                continue  # the next type of the union may take it; none: the error below
        raise ConfigError(f"{src.where(path)}: {key} must be {_describe(tp)}, got {_show(value)}")
    if origin_tp is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"{src.where(path)}: {key} must be one of {', '.join(map(repr, choices))}, "
                f"got {_show(value)}{hint}"
            )
        return value
    if origin_tp is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(
                f"{src.where(path)}: {key} must be {_describe(tp)}, got {_show(value)}"
            )
        return [_coerce(item_tp, v, src, path + (i,)) for i, v in enumerate(value)]
    if origin_tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src.where(path)}: {key} must be a mapping, got {_show(value)}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(val_tp, v, src, path + (k,)) for k, v in value.items()}
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
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema bug, not user error
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{src.where(path)}: {key} must be {_describe(tp)}, got {_show(value)}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)
"""Numbers YAML 1.1 leaves as strings (``1e-4``) that a float key takes."""


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
