"""Every DeepSpeed detail of lorarec, behind one object (:class:`DeepSpeedStrategy`).

* the DeepSpeed config: a file of ``ds_configs/`` (or a path) + the run's overrides + the values
  the run decides (batch sizes, clipping, optimizer, bf16);
* process-group start (gloo on the CPU, nccl on GPUs);
* the backbone created partitioned under ZeRO-3 (``HfDeepSpeedConfig`` kept alive around
  ``from_pretrained``; ``deepspeed.zero.Init`` for configs built from scratch);
* ``deepspeed.initialize``, checkpoint save/load, gathering of trainable parameters.

The training loop reads the same whatever the ZeRO stage.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lorarec.core import config as C
from lorarec.core.config import RunConfig
from lorarec.core.errors import ConfigError, LorarecError
from lorarec.trainer import checkpoint_manifest as CM

log = logging.getLogger(__name__)


class CheckpointError(LorarecError):
    """A checkpoint could not be written (a full disk)."""


def _disk_full(exc: BaseException, root: Path) -> bool:
    """Whether ``exc`` (an OSError, or torch's RuntimeError of a failed write) came from a full
    file system under ``root``."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(root).free < (1 << 20)
    except OSError:
        return False


FAULT_ENV = "LORAREC_FAULT_CHECKPOINT"
"""Fault injection for tests: ``POINT@STEP`` kills rank 0 (SIGKILL) in the save of step STEP,
before POINT: ``rank-files`` (after DeepSpeed wrote them), ``manifest``, ``latest``."""


def _injected_crash(point: str, step: int | None) -> None:
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{point}@{step}" and int(os.environ.get("RANK", "0")) == 0:
        import signal

        log.warning("%s=%s: killing rank 0", FAULT_ENV, spec)
        os.kill(os.getpid(), signal.SIGKILL)


DS_CONFIG_DIR = C.DS_CONFIG_DIR
CHECKPOINT_MARKER = CM.MARKER


def ds_config_path(name: str) -> Path:
    return C.ds_config_path(name)


def build_ds_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The complete DeepSpeed config of a run (no "auto" values left). The file and the
    overrides are checked again here (the file may have changed since the config was read)."""
    _, ds = C.read_ds_config(cfg.deepspeed.config)
    for key, value in cfg.deepspeed.overrides.items():
        C.merge_ds_override(ds, key, copy.deepcopy(value), "deepspeed.overrides")
    C.check_ds_dict(ds, "", lambda key: f"deepspeed.config {cfg.deepspeed.config} + overrides")
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = t.gradient_accumulation_steps
    ds["train_batch_size"] = t.micro_batch_size * t.gradient_accumulation_steps * world_size
    ds["gradient_clipping"] = t.max_grad_norm
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": t.lr,
            "betas": list(t.betas),
            "eps": 1e-8,
            "weight_decay": t.weight_decay,
            "torch_adam": True,
        },
    }
    bf16 = bool(ds.get("bf16", {}).get("enabled", False))
    if cfg.model.dtype == "bfloat16" and not bf16:
        ds["bf16"] = {"enabled": True}
    elif bf16 and cfg.model.dtype != "bfloat16":
        raise ConfigError(
            f"deepspeed.config {cfg.deepspeed.config} trains in bf16 but model.dtype is {cfg.model.dtype}; "
            "set model.dtype: bfloat16"
        )
    if cfg.model.dtype == "float16":
        ds["fp16"] = {"enabled": True}
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def choose_gloo_interface(env) -> str | None:
    """Across hosts, gloo must announce an address the other hosts reach. By default it uses
    the address this host's name resolves to, which is often loopback (``127.0.1.1 host`` in
    ``/etc/hosts``): the other hosts' ranks then connect to themselves and the group never
    forms. Unless ``GLOO_SOCKET_IFNAME`` is set, it is set to the interface that routes to
    ``MASTER_ADDR``, the one every rank reaches. On one machine (a loopback master) nothing
    changes. Returns the interface chosen."""
    import ipaddress
    import socket

    if env.get("GLOO_SOCKET_IFNAME") or not env.get("MASTER_ADDR"):
        return None
    try:
        master = socket.gethostbyname(env["MASTER_ADDR"])
    except OSError:
        return None  # init_process_group names the unresolvable address
    if ipaddress.ip_address(master).is_loopback:
        return None
    from lorarec.core.net import route_interface

    found = route_interface(master, int(env.get("MASTER_PORT") or 9))
    if found is None:
        return None
    env["GLOO_SOCKET_IFNAME"] = found[0]
    log.info("gloo: interface %s (%s), the route to MASTER_ADDR %s", *found, master)
    return found[0]


class DeepSpeedStrategy:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.engine = None
        self._hf_ds_config = None  # must stay alive while ZeRO-3 models are loaded

    # ----------------------------------------------------------------- processes

    def init_distributed(self) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        backend = get_accelerator().communication_backend_name()
        if get_accelerator().device_name() == "cpu":
            # DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce op
            # (a C++ toolchain and a minute on a fresh machine, a 64 MiB /dev/shm segment per
            # rank) that only tensor-parallel inference calls; training reduces through gloo.
            # Marking it incompatible is DeepSpeed's own switch for an op it cannot build.
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if backend == "gloo":
            choose_gloo_interface(os.environ)
        deepspeed.init_distributed(dist_backend=backend)
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(get_accelerator().device_name(self.local_rank))
        if self.device.type != "cpu":
            get_accelerator().set_device(self.local_rank)
        self.ds_config = build_ds_config(self.cfg, self.world_size)
        log.info("rank %d/%d on %s, backend %s", self.rank, self.world_size, self.device, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(
            values, dtype=torch.float64, device=self.device if self.device.type != "cpu" else "cpu"
        )
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (small, JSON-like), in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (JSON-like), in rank order, on rank 0; None on the others."""
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def shutdown(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    # -------------------------------------------------------------------- model

    def load_backbone(self):
        """(model, tokenizer), partitioned across ranks at creation under ZeRO-3."""
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        from lorarec.trainer.backbone import DTYPES, load_tokenizer, resolve_backbone

        m = self.cfg.model
        tokenizer = load_tokenizer(m)
        source = resolve_backbone(m)
        if zero_stage(self.ds_config) == 3:
            # Kept alive: while it exists, transformers creates the model partitioned across
            # ranks (deepspeed.zero.Init) and loads each tensor straight into its partitions.
            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[m.dtype])
        return model, tokenizer

    def initialize(self, model, lr_lambda, universal: bool = False):
        """The DeepSpeed engine. ``universal``: the run resumes from a checkpoint written by
        another number of ranks, loaded through DeepSpeed's universal checkpoint format."""
        import deepspeed

        if universal:
            self.ds_config.setdefault("checkpoint", {})["load_universal"] = True

        params = [p for p in model.parameters() if p.requires_grad]

        def scheduler(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, config=self.ds_config, lr_scheduler=scheduler
        )
        return self.engine

    def initialize_inference(self, model):
        """A DeepSpeed engine without optimizer, for evaluation only: under ZeRO-3 the weights
        stay partitioned and each layer is gathered as it runs, as in training."""
        import deepspeed

        config = {k: v for k, v in self.ds_config.items() if k not in ("optimizer", "scheduler")}
        self.engine, _, _, _ = deepspeed.initialize(model=model, config=config)
        self.engine.eval()
        return self.engine

    @property
    def zero_stage(self) -> int:
        return zero_stage(self.ds_config)

    # ------------------------------------------------------------------- a step

    @property
    def module(self):
        """The model the engine wraps (the PEFT model), for what is not DeepSpeed's business:
        train/eval mode, saving the adapter, scoring."""
        return self.engine.module

    def forward(self, **inputs):
        return self.engine(**inputs)

    def set_training(self, training: bool) -> None:
        """Training (dropout on) or evaluation mode of the engine and its model."""
        self.engine.train(training)

    def backward(self, loss_sum: torch.Tensor, step_tokens: int) -> None:
        """Backpropagate a micro-batch's summed token loss so that the step's gradient is that
        of its mean loss over its ``step_tokens`` tokens, counted over all micro-batches of all
        ranks, however the step is split between them. DeepSpeed divides each micro-batch's
        loss by the accumulation steps and averages the gradients over the ranks: the loss is
        multiplied by both, and divided by the step's tokens."""
        scale = self.world_size * self.engine.gradient_accumulation_steps() / step_tokens
        self.engine.backward(loss_sum * scale)

    def step(self) -> None:
        """After every micro-batch: DeepSpeed steps the optimizer and the learning rate at the
        last micro-batch of a step (its accumulation boundary) and only counts before it."""
        self.engine.step()

    def grad_norm(self) -> float | None:
        """The global gradient norm of the last optimizer step (before clipping)."""
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def count_parameters(self) -> tuple[int, int]:
        """All and trainable parameters of the model, whole (a partitioned parameter counts as
        its full size, ``ds_numel``)."""
        total = trainable = 0
        for p in self.module.parameters():
            n = getattr(p, "ds_numel", None) or p.numel()
            total += n
            trainable += n if p.requires_grad else 0
        return total, trainable

    # ----------------------------------------------------------------- memory

    @staticmethod
    def parameter_bytes(model) -> int:
        """Bytes of parameters held by this rank (a ZeRO-3 partition counts as its shard)."""
        total = 0
        for p in model.parameters():
            t = getattr(p, "ds_tensor", None)
            t = p if t is None else t
            total += t.numel() * t.element_size()
        return total

    # ---------------------------------------------------------------- gathering

    @contextmanager
    def gathered(self, params):
        """Full values of ``params`` on every rank (all ranks must enter)."""
        if zero_stage(self.ds_config) == 3:
            import deepspeed

            # parameters prefetched for a forward that did not come (after an evaluation
            # forward) may still be in flight: the gather below starts from partitioned ones
            self.release_gathered()
            with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
                yield
        else:
            yield

    def release_gathered(self) -> None:
        """Partition again every parameter an inference forward left gathered (ZeRO-3 prefetches
        for a forward that may not come)."""
        if zero_stage(self.ds_config) == 3 and self.engine is not None:
            self.engine.empty_partition_cache()

    # -------------------------------------------------------------- checkpoints

    def save_checkpoint(self, root: Path, tag: str, state: dict[str, Any], keep: int) -> None:
        """Save ``tag`` under ``root``; ``root/latest`` moves to it only once every rank is done,
        so a crash during a save leaves the previous checkpoint in use. A full disk is one clear
        error; the half-written checkpoint is removed and ``latest`` stays where it was."""
        try:
            self._save_checkpoint(root, tag, state, keep)
        except Exception as exc:
            if not _disk_full(exc, root):
                raise
            shutil.rmtree(root / tag, ignore_errors=True)
            previous = self.latest_checkpoint(root)
            raise CheckpointError(
                f"no space left on device: checkpoint {tag} not saved, "
                + (f"{previous} is intact" if previous else "no earlier checkpoint")
                + f" ({root}: {shutil.disk_usage(root).free // 1024} KiB free)"
            ) from None

    def _save_checkpoint(self, root: Path, tag: str, state: dict[str, Any], keep: int) -> None:
        from safetensors.torch import save_file

        from lorarec.core.io import write_json_atomic, write_text_atomic

        if self.is_main and (root / tag).exists():  # left by a run that crashed after saving it
            shutil.rmtree(root / tag)
        self.barrier()
        self.engine.save_checkpoint(
            str(root), tag=tag, exclude_frozen_parameters=True, save_latest=False
        )
        _injected_crash("rank-files", state.get("global_step"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(root / tag / f"rng_rank{self.rank:05d}.safetensors"))
        if self.is_main:
            write_json_atomic(root / tag / "trainer_state.json", state)
        # nothing is written into the checkpoint while the ranks hash it (an atomic write's
        # temporary directory vanishing under another rank's scan would fail that rank)
        self.barrier()
        # every rank hashes what it wrote; the manifest comes last, before the marker
        hashes = CM.own_hashes(root / tag, self.rank, self.world_size)
        per_rank = self.all_gather_object(hashes)
        if self.is_main:
            _injected_crash("manifest", state.get("global_step"))
            CM.write_manifest(root / tag, per_rank)
            (root / tag / CHECKPOINT_MARKER).write_text("")
            _injected_crash("latest", state.get("global_step"))
            write_text_atomic(root / "latest", tag + "\n")
            complete = sorted(
                p for p in root.iterdir() if p.is_dir() and (p / CHECKPOINT_MARKER).exists()
            )
            for old in complete[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
            for partial in (
                p
                for p in root.iterdir()
                if p.is_dir() and not (p / CHECKPOINT_MARKER).exists() and p.name != tag
            ):
                shutil.rmtree(partial, ignore_errors=True)
        self.barrier()

    @staticmethod
    def latest_checkpoint(root: Path) -> str | None:
        latest = root / "latest"
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        return tag if (root / tag / CHECKPOINT_MARKER).is_file() else None

    @staticmethod
    def checkpoint_state(root: Path, tag: str) -> dict[str, Any]:
        """The trainer state saved with checkpoint ``root/tag``."""
        return json.loads((root / tag / "trainer_state.json").read_text())

    def load_checkpoint(self, root: Path, tag: str) -> dict[str, Any]:
        """Load ``root/tag`` into the engine and this rank's RNG. A checkpoint written by another
        number of ranks is first converted to DeepSpeed's universal format (rank 0, into
        ``root/<tag>.universal``, which the next save removes) and loaded from there; the engine
        must then have been built with ``universal=True``."""
        from safetensors.torch import load_file

        state = self.checkpoint_state(root, tag)
        written = state.get("world_size")
        load_tag = tag
        if written != self.world_size:
            if not self.ds_config.get("checkpoint", {}).get("load_universal"):
                raise LorarecError(
                    f"{root / tag}: written by {written} ranks, this run has {self.world_size}, "
                    "and the engine was not built to load a universal checkpoint"
                )
            load_tag = universal_tag(tag)
            if self.is_main:
                convert_to_universal(root / tag, root / load_tag)
                log.info(
                    "%s was written by %s ranks; converted to DeepSpeed's universal checkpoint "
                    "%s to load on %d",
                    tag,
                    written,
                    root / load_tag,
                    self.world_size,
                )
            self.barrier()
        path, _ = self.engine.load_checkpoint(
            str(root),
            tag=load_tag,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / load_tag}")
        # this rank's RNG as it was; a rank the checkpoint did not have keeps its seeded state
        rng_file = root / tag / f"rng_rank{self.rank:05d}.safetensors"
        if rng_file.is_file():
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["torch_cpu"])
            if "torch_cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["torch_cuda"])
        return state


def universal_tag(tag: str) -> str:
    """The directory (beside ``tag``) of its conversion to DeepSpeed's universal format."""
    return f"{tag}.universal"


def convert_to_universal(src: Path, dst: Path) -> None:
    """Convert the ZeRO checkpoint ``src`` to DeepSpeed's universal format in ``dst`` (made
    afresh: an earlier conversion is never trusted), with DeepSpeed's own ``ds_to_universal``,
    in this process (no worker pool inside a rank)."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal

    tmp = dst.with_name(f".{dst.name}.tmp")
    for old in (tmp, dst):
        if old.exists():
            shutil.rmtree(old)
    args = argparse.Namespace(
        input_folder=str(src),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ds_to_universal.main(args)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LorarecError(
            f"{src}: DeepSpeed's universal checkpoint conversion failed ({type(exc).__name__}: {exc}); "
            "resume with the number of ranks that wrote it"
        ) from exc
    log.debug("ds_to_universal: %s", out.getvalue())
    os.replace(tmp, dst)
    # DeepSpeed's own pointer beside the conversion; lorarec names what it loads
    (dst.parent / "latest_universal").unlink(missing_ok=True)
