"""Adapter fine-tuning of an LLM recommender under DeepSpeed: the recipe, one rank's view.

Read top to bottom, in the order the job runs (:func:`recipe_main`):

* ``setup``: process group, prepared data, backbone (partitioned under ZeRO-3), adapter
  (``train.adapter``: PEFT LoRA or a lorarec method) and its conditioning builder, DeepSpeed
  engine with AdamW and warm-up + cosine LR, resume from the newest checkpoint;
* ``train``: the loop. Each step's micro-batches with their conditioning (sampled
  neighbourhood, SASRec states) over the webdataset stream (each sample once per epoch across
  ranks); ``train_step`` computes the loss on answer tokens, normalised by the step's
  answer-token count over all ranks, so that it does not depend on how the global batch is
  split; its record goes to the run log (``run_log.py``: JSONL, progress bar) and to this
  rank's Prometheus series; a checkpoint every ``train.checkpoint_every`` steps and at the end,
  with the data position and RNG state;
* ``export``: trainable parameters gathered on every rank, rank 0 writes the PEFT adapter;
* ``evaluate`` (``train.evaluate``): the trained model evaluated by every rank, with the
  weights still partitioned (:mod:`lorarec.evaluation.sharded`);
* ``cleanup``: ``train_summary.json`` and the loss plot, endpoint withdrawn, process group down.

Every DeepSpeed call (forward, backward and its loss scale, step, gradient norm, learning rate,
parameter counts, gathering, checkpoints) is behind the strategy (``distributed.py``).
``setup_evaluation`` replaces ``setup`` and ``train`` when the ranks only evaluate
(``lorarec eval --llm``).

Config keys: ``train.*`` (loop, adapter), ``deepspeed.*`` (ZeRO config), ``model.*``, ``data.*``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorarec.classic.inputs import load_sasrec
from lorarec.core.config import RunConfig
from lorarec.core.errors import ConfigError
from lorarec.data.prepared import PreparedData
from lorarec.trainer.adapter import attach_adapter
from lorarec.trainer.batching import (
    ExampleBuilder,
    answer_logits_to_keep,
    answer_token_loss_sum,
    collate,
)
from lorarec.trainer.conditioning import (
    SEQUENCE_ADAPTERS,
    ConditioningBuilder,
    adapter_label,
    connect_graph_service,
    placeholder_kinds,
)
from lorarec.trainer.data_stream import TrainStream
from lorarec.trainer.distributed import DeepSpeedStrategy
from lorarec.trainer.prompts import PromptStyle
from lorarec.trainer.run_log import RunLog

log = logging.getLogger(__name__)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def measure_matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 0.5) -> float:
    """The FLOP/s a large matmul reaches on this rank, the MFU denominator. On a GPU, by the
    wall clock. On the CPU, one core's rate times the rank's compute threads: one thread
    multiplies, timed by the CPU time it spent, so other processes sharing the cores do not
    lower it (by the wall clock, a busy machine measured a low peak and steps that later ran
    alone reported an MFU above 1), and neither do the threads of a parallel matmul spinning
    at their barriers (CPU time too: two threads on a busy machine measured 60% of the
    per-core rate, and the fp32 MFU read above 1)."""
    n = 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def run() -> tuple[int, float, float]:
        a @ b  # warm-up
        iters, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            a @ b
            iters += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return iters, time.perf_counter() - start, time.process_time() - cpu_start

    if device.type == "cuda":
        iters, wall, _ = run()
        return 2 * n**3 * iters / wall
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        iters, _, cpu = run()
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 * iters / max(cpu, 1e-9) * threads


@dataclass(frozen=True)
class StepFlops:
    """The weight-matmul FLOPs of a training step (the MFU numerator): per token, 4 per frozen
    weight matrix entry (forward, and backward to the activations) and 6 per trainable one (plus
    the weight gradient); embedding tables are lookups and norms are elementwise, no FLOPs;
    the vocabulary projection runs only at the positions whose logits are kept
    (``logits_to_keep``). Attention scores are not counted, so the MFU is a lower bound.
    ``tests/test_step_flops.py`` checks it against the FLOPs torch counts."""

    body_frozen: int  # frozen weight matrix entries multiplied at every token
    body_trainable: int
    head: int  # the vocabulary projection's parameters
    head_trainable: bool = False

    @classmethod
    def of(cls, model: torch.nn.Module) -> StepFlops:
        def numel(p) -> int:
            return getattr(p, "ds_numel", None) or p.numel()

        head_w = None
        for m in model.modules():  # the backbone (a PEFT wrapper does not expose its head)
            get = getattr(m, "get_output_embeddings", None)
            if callable(get) and isinstance(get(), torch.nn.Linear):
                head_w = get().weight
                break
        lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        frozen = trainable = 0
        for p in model.parameters():  # a tied head is one parameter, counted once (as head)
            if p is head_w or id(p) in lookups or len(getattr(p, "ds_shape", p.shape)) < 2:
                continue  # the head, embedding tables, norms' and biases' vectors
            if p.requires_grad:
                trainable += numel(p)
            else:
                frozen += numel(p)
        return cls(
            frozen,
            trainable,
            0 if head_w is None else numel(head_w),
            head_w is not None and head_w.requires_grad,
        )

    def __call__(self, tokens: float, logit_rows: float) -> float:
        per_head = 6 if self.head_trainable else 4
        return tokens * (4 * self.body_frozen + 6 * self.body_trainable) + (
            logit_rows * per_head * self.head
        )


def process_memory() -> dict[str, int]:
    """Resident and peak resident bytes of this process (and peak device bytes on a GPU)."""
    from lorarec.monitoring.exporter import process_memory_bytes

    mem = process_memory_bytes()
    out = {"rss_bytes": mem["resident"], "peak_rss_bytes": mem["peak_resident"]}
    if torch.cuda.is_available():
        out["device_bytes"] = torch.cuda.max_memory_allocated()
    return out


class LoraRecipe:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        self.data = None
        self.strategy = DeepSpeedStrategy(cfg)
        self.ckpt_dir = run_dir / "checkpoints"

    # ------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, s = self.cfg, self.strategy
        timer = _PhaseTimer()
        s.init_distributed()
        timer("distributed")
        self.metrics = self.start_exporter()
        torch.manual_seed(cfg.train.seed)
        task = cfg.data.prepared_task
        self.data = PreparedData.open(cfg.data.dir, task)
        self.memory = {"rss_before_model_bytes": process_memory()["rss_bytes"]}
        model, self.tokenizer = s.load_backbone()
        self.param_bytes_backbone = s.parameter_bytes(model)
        timer("backbone")
        model = self.attach_adapter(model)
        if cfg.train.gradient_checkpointing:
            from lorarec.adapters import enable_gradient_checkpointing

            # each recomputed layer reads the conditioning state of the forward it belongs to
            enable_gradient_checkpointing(model)
        sasrec = None
        if cfg.train.adapter in SEQUENCE_ADAPTERS:
            sasrec = load_sasrec(cfg, self.data, create=False)
        timer("adapter")
        self.client = connect_graph_service(cfg, self.data)
        timer("graph service")
        self.conditioning = ConditioningBuilder(cfg, self.data, sasrec, client=self.client)
        self.builder = ExampleBuilder(
            self.tokenizer,
            self.data.titles,
            task,
            cfg.data.history_short,
            cfg.train.max_length,
            placeholder_kinds(cfg),
            PromptStyle.from_config(cfg.data),
        )
        n_train = self.data.manifest["tasks"][task]["samples"]["train"]
        self.stream = TrainStream(
            self.data.shards("train"),
            self.data.manifest["options"]["shard_size"],
            n_train,
            rank=s.rank,
            world_size=s.world_size,
            micro_batch_size=cfg.train.micro_batch_size,
            accumulation=cfg.train.gradient_accumulation_steps,
            seed=cfg.train.seed,
            subset_size=cfg.train.max_samples,
            length=(lambda s: len(self.builder.build(s).input_ids))
            if cfg.train.group_by_length
            else None,
            length_window=cfg.train.length_window,
        )
        per_epoch = self.stream.steps_per_epoch
        self.total_steps = per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        t = cfg.train
        resume_tag = s.latest_checkpoint(self.ckpt_dir) if self.resume else None
        universal = False
        if resume_tag is not None:
            written = s.checkpoint_state(self.ckpt_dir, resume_tag)
            check_resume_shape(
                written,
                self.ckpt_dir / resume_tag,
                s.world_size,
                t.micro_batch_size,
                t.gradient_accumulation_steps,
            )
            universal = written["world_size"] != s.world_size
        s.initialize(
            model,
            lambda step: lr_factor(step, t.warmup_steps, self.total_steps, t.min_lr_ratio),
            universal=universal,
        )
        timer("engine")
        self.param_bytes = s.parameter_bytes(s.module)
        self.n_params, self.n_trainable = s.count_parameters()
        self.flops = StepFlops.of(s.module)
        self.peak_flops = measure_matmul_peak(next(s.module.parameters()).dtype, s.device)
        timer("peak flops")
        self.global_step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.samples_seen = self.tokens_seen = 0
        self.monitoring_seconds = self.checkpoint_seconds = 0.0
        if self.metrics is not None:
            self.metrics.total_steps.set(self.total_steps)
        if self.resume:
            if resume_tag is None:
                log.warning(
                    "--resume: no complete checkpoint in %s; starting from the beginning",
                    self.ckpt_dir,
                )
            else:
                state = s.load_checkpoint(self.ckpt_dir, resume_tag)
                self.global_step, self.epoch, self.step_in_epoch = (
                    state["global_step"],
                    state["epoch"],
                    state["step_in_epoch"],
                )
                self.samples_seen, self.tokens_seen = state["samples_seen"], state["tokens_seen"]
                if s.is_main:
                    log.info("resumed from %s (step %d)", resume_tag, self.global_step)
        timer("resume")
        self.log = RunLog(self.run_dir, s.is_main, self.total_steps, self.global_step)
        self.memory.update(self.start_memory_phase("setup"))
        if s.is_main:
            log.info("setup phases: %s", timer.summary())
            log.info(
                "%d steps (%d per epoch, global batch %d), %s parameters, %s trainable",
                self.total_steps,
                per_epoch,
                self.stream.global_batch,
                f"{self.n_params:,}",
                f"{self.n_trainable:,}",
            )

    def setup_evaluation(self, adapter: str | None) -> None:
        """Evaluation without training (``lorarec eval --llm``, started by the launcher like
        training): the backbone partitioned as for training, the adapter saved in ``adapter``
        (None: zero-shot) attached as training attaches it and loaded before the engine
        partitions it, an engine without an optimizer."""
        from lorarec.trainer.adapter import check_adapter_dir, load_adapter_weights

        cfg, s = self.cfg, self.strategy
        self.evaluate_only, self.adapter_dir = True, adapter
        s.init_distributed()
        self.metrics = None
        self.data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
        self.memory = {"rss_before_model_bytes": process_memory()["rss_bytes"]}
        model, self.tokenizer = s.load_backbone()
        self.client, self.conditioning = None, None
        if adapter is not None:
            check_adapter_dir(adapter, cfg)
            model = self.attach_adapter(model)
            load_adapter_weights(model, adapter)
            sasrec = None
            if cfg.train.adapter in SEQUENCE_ADAPTERS:
                sasrec = load_sasrec(cfg, self.data, create=False)
            self.client = connect_graph_service(cfg, self.data)
            self.conditioning = ConditioningBuilder(cfg, self.data, sasrec, client=self.client)
        s.initialize_inference(model)
        self.memory.update(self.start_memory_phase("setup"))

    @staticmethod
    def start_memory_phase(ended: str) -> dict[str, Any]:
        """The peak memory of the phase that ``ended``; the next peak measures what follows
        (training: the partitioned model, gathered layers, activations, export)."""
        from lorarec.monitoring.exporter import reset_peak_resident

        mem = process_memory()
        out: dict[str, Any] = {f"peak_rss_{ended}_bytes": mem["peak_rss_bytes"]}
        if "device_bytes" in mem:
            out[f"peak_device_{ended}_bytes"] = mem["device_bytes"]
            torch.cuda.reset_peak_memory_stats()
        out["peak_reset"] = reset_peak_resident()
        if not out["peak_reset"]:
            log.warning("cannot reset the peak resident size: training peaks include set-up")
        return out

    def start_exporter(self):
        """This rank's Prometheus endpoint; rank 0 records every rank's for discovery."""
        m = self.cfg.monitoring
        if not m.enabled:
            return None
        from lorarec.monitoring.discovery import write_rank_endpoints
        from lorarec.monitoring.exporter import Endpoint, TrainerMetrics, node_name

        s = self.strategy
        metrics = TrainerMetrics(self.cfg.job, s.rank, node_name(), adapter_label(self.cfg))
        endpoint = metrics.serve(m.host, m.port + s.local_rank if m.port else 0)
        endpoints = s.all_gather_object(endpoint.to_json())
        if s.is_main:
            write_rank_endpoints(self.run_dir, [Endpoint.from_json(e) for e in endpoints])
            log.info("metrics: %s", ", ".join(Endpoint.from_json(e).url for e in endpoints))
        return metrics

    def attach_adapter(self, model):
        return attach_adapter(model, self.cfg, self.data)

    def batch(self, samples: list[dict], weights: list[float] | None, epoch: int):
        """Token tensors and the adapter's conditioning for one micro-batch."""
        examples = [self.builder.build(x) for x in samples]
        batch = collate(examples, self.tokenizer.pad_token_id, weights=weights)
        cond = self.conditioning.build(
            samples,
            [e.marks for e in examples],
            [len(e.input_ids) for e in examples],
            batch["input_ids"].shape[1],
            epoch=epoch,
        )
        return batch, cond

    # ------------------------------------------------------------------- train

    def train(self) -> None:
        """The training loop: every step's micro-batches (built ``graph_service.prefetch`` steps
        ahead in a background thread), one optimizer step, its record, a checkpoint every
        ``train.checkpoint_every`` steps and at the end."""
        from lorarec.graph_service.client import Prefetcher

        s, cfg = self.strategy, self.cfg
        self.log.open_progress()
        s.set_training(True)
        depth = cfg.graph_service.prefetch
        built = (
            Prefetcher(self.planned_steps(), self.build_step, depth)
            if depth > 0
            else map(self.build_step, self.planned_steps())
        )
        try:
            wait_start = time.perf_counter()
            for step, batches, build_seconds in built:
                record = self.train_step(step, batches, wait_start, build_seconds)
                self.advance(step)
                self.log.step(record, step.epoch, step.slots if cfg.train.log_samples else None)
                done = self.global_step >= self.total_steps
                if self.global_step % cfg.train.checkpoint_every == 0 and not done:
                    self.save_checkpoint()
                wait_start = time.perf_counter()
        finally:
            if isinstance(built, Prefetcher):
                built.close()
        self.log.close_progress()
        self.save_checkpoint()

    def advance(self, step) -> None:
        """The data position after ``step``: the next step of its epoch, or the next epoch."""
        self.global_step += 1
        self.step_in_epoch = step.step_in_epoch + 1
        if self.step_in_epoch == self.stream.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def planned_steps(self):
        """``(global step, step)`` from the current position to ``total_steps``."""
        g, epoch, start = self.global_step, self.epoch, self.step_in_epoch
        while g < self.total_steps and epoch < self.cfg.train.epochs:
            for step in self.stream.steps(epoch, start):
                yield g, step
                g += 1
                if g >= self.total_steps:
                    return
            epoch, start = epoch + 1, 0

    def build_step(self, planned):
        """This rank's micro-batches of one step, with their conditioning."""
        _, step = planned
        start = time.perf_counter()
        batches = []
        for micro in step.mine:
            # each sample's neighbourhood is seeded by its key and the epoch (conditioning.py),
            # so a resumed run draws what the interrupted one drew
            if micro:
                batches.append(self.batch(micro, None, step.epoch))
            else:  # an empty slot of the last step: a zero-weight placeholder keeps the ranks in step
                batches.append(self.batch([step.slots[0][0]], [0.0], step.epoch))
        return step, batches, time.perf_counter() - start

    def train_step(self, step, batches, since: float, build_seconds: float) -> dict[str, Any]:
        """One optimizer step; ``since`` is when the previous step ended, so the step's time
        includes waiting for its data (which prefetch makes near zero)."""
        s = self.strategy
        data_wait = time.perf_counter() - since
        # Answer tokens of the whole step (all ranks): every rank knows every slot's samples.
        step_answer_tokens = sum(
            self.builder.num_answer_tokens(x) for slot in step.slots for x in slot
        )
        loss_sum = tokens = logit_rows = 0.0
        for batch, cond in batches:
            batch = {k: v.to(s.device) for k, v in batch.items()}
            extra = {} if cond is None else {"conditioning": cond.to(s.device)}
            # logits only from the position before the first answer token on: the vocabulary
            # projection of the prompts is never needed
            keep = answer_logits_to_keep(batch["labels"])
            logits = s.forward(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=keep,
                **extra,
            ).logits
            micro_loss = answer_token_loss_sum(logits, batch["labels"])
            # the gradient of the step's loss: its summed answer-token losses over all ranks,
            # divided by the step's answer tokens
            s.backward(micro_loss, step_answer_tokens)
            s.step()
            loss_sum += float(micro_loss.detach())
            tokens += float(batch["attention_mask"].sum())
            logit_rows += keep * batch["input_ids"].shape[0]
        grad_norm = s.grad_norm()
        loss_total, tokens_total, rows_total = s.all_reduce_sum([loss_sum, tokens, logit_rows])
        seconds = time.perf_counter() - since
        self.samples_seen += step.num_samples
        self.tokens_seen += int(tokens_total)
        tokens_per_s = tokens_total / seconds
        record = {
            "step": self.global_step + 1,
            "time": time.time(),
            "epoch": step.epoch,
            "loss": loss_total / step_answer_tokens,
            "lr": s.learning_rate(),
            "grad_norm": grad_norm,
            "samples": step.num_samples,
            "tokens": int(tokens_total),
            "answer_tokens": step_answer_tokens,
            "step_seconds": seconds,
            "data_wait_seconds": data_wait,
            "batch_build_seconds": build_seconds,
            "graph_retries": self.client.retried if self.client is not None else 0,
            "tokens_per_s": tokens_per_s,
            "samples_per_s": step.num_samples / seconds,
            "mfu": self.flops(tokens_total, rows_total) / seconds / s.world_size / self.peak_flops,
            "param_bytes_per_rank": self.param_bytes,
            **process_memory(),
        }
        if self.metrics is not None:
            start = time.perf_counter()
            self.metrics.observe_step(record, tokens, sum(len(m) for m in step.mine))
            self.monitoring_seconds += time.perf_counter() - start
        return record

    # ------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        start = time.perf_counter()
        state = {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "world_size": self.strategy.world_size,
            "global_batch": self.stream.global_batch,
        }
        tag = f"step-{self.global_step:08d}"
        if self.strategy.latest_checkpoint(self.ckpt_dir) == tag:
            return
        self.strategy.save_checkpoint(self.ckpt_dir, tag, state, self.cfg.train.keep_checkpoints)
        seconds = time.perf_counter() - start
        self.checkpoint_seconds += seconds
        if self.metrics is not None:
            self.metrics.checkpoint_seconds.observe(seconds)
        if self.strategy.is_main:
            log.info("checkpoint %s (%.1f s)", tag, seconds)

    # ------------------------------------------------------------------ export

    def export(self) -> None:
        """Gather the trainable parameters on every rank; rank 0 writes the PEFT adapter, and the
        logits of a fixed probe batch (to check the export against the trained model)."""
        from safetensors.torch import save_file

        from lorarec.core.io import atomic_path

        s = self.strategy
        module = s.module
        s.set_training(False)
        probe_samples = self.data.samples("test")[:2]
        probe, cond = self.batch(probe_samples, None, epoch=0)
        extra = {} if cond is None else {"conditioning": cond.to(s.device)}
        with torch.no_grad():
            logits = s.forward(
                input_ids=probe["input_ids"].to(s.device),
                attention_mask=probe["attention_mask"].to(s.device),
                **extra,
            ).logits
        trainable = [p for p in module.parameters() if p.requires_grad]
        with s.gathered(trainable):
            if s.is_main:
                with atomic_path(self.run_dir / "adapter") as tmp:
                    module.save_pretrained(str(tmp))
                    weights = tmp / "adapter_model.safetensors"
                    if not weights.is_file() or weights.stat().st_size < 1024:
                        raise RuntimeError(
                            f"adapter export wrote {weights.stat().st_size if weights.exists() else 0} bytes"
                        )
                save_file(
                    {
                        "input_ids": probe["input_ids"],
                        "attention_mask": probe["attention_mask"],
                        "logits": logits.float().cpu().contiguous(),
                        **({} if cond is None else cond.to_tensors()),
                    },
                    str(self.run_dir / "probe.safetensors"),
                )
        s.barrier()

    # --------------------------------------------------------------- evaluate

    def evaluate(self) -> None:
        """With ``train.evaluate``: the trained model evaluated where it lives, every rank
        scoring its share of the samples with the partitioned weights
        (:mod:`lorarec.evaluation.sharded`); rank 0 writes ``llm_results.json``, which
        ``lorarec train`` joins with the baselines into ``results.json``."""
        evaluate_only = getattr(self, "evaluate_only", False)
        if not (self.cfg.train.evaluate or evaluate_only):
            return
        from lorarec.core.io import write_json_atomic
        from lorarec.evaluation.protocol import llm_label
        from lorarec.evaluation.sharded import evaluate_in_ranks
        from lorarec.trainer.backbone import describe_backbone

        s = self.strategy
        if not evaluate_only:
            self.memory.update(self.start_memory_phase("train"))
        adapter = self.adapter_dir if evaluate_only else str(self.run_dir / "adapter")
        start = time.perf_counter()
        module = s.module
        s.set_training(False)
        with torch.no_grad():
            evaluated = evaluate_in_ranks(
                module,
                self.tokenizer,
                self.data,
                self.cfg,
                self.conditioning,
                s,
                llm_label(self.cfg, adapter),
            )
        s.release_gathered()
        seconds = time.perf_counter() - start
        # every rank's parameter bytes and peak while it evaluated: its partition, not the model
        mine = {"param_bytes": s.parameter_bytes(module), **process_memory()}
        mine["rss_before_model_bytes"] = self.memory["rss_before_model_bytes"]
        self.memory["eval_param_bytes"] = mine["param_bytes"]
        ranks = s.all_gather_object(mine)
        if s.is_main:
            entries, raw = evaluated
            write_json_atomic(
                self.run_dir / "llm_results.json",
                {
                    "backbone": describe_backbone(self.cfg.model),
                    "world_size": s.world_size,
                    "zero_stage": s.zero_stage,
                    "seconds": round(seconds, 1),
                    "memory_per_rank": ranks,
                    "methods": entries,
                    "raw": raw,
                },
            )
            log.info("evaluated %s in %.1f s", ", ".join(entries), seconds)

    # ----------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        s = self.strategy
        # every rank's own figures, for the summary
        mine = {
            **process_memory(),
            **getattr(self, "memory", {}),
            "checkpoint_seconds": self.checkpoint_seconds,
            "metrics_update_seconds": self.monitoring_seconds,
            "metrics_scrape_cpu_seconds": self.metrics.scrape_cpu_seconds
            if self.metrics is not None
            else 0.0,
            "graph_retries": self.client.retried if self.client is not None else 0,
        }
        ranks = s.all_gather_object(mine)
        self.log.finish(self.facts(), ranks)
        if self.metrics is not None:
            if s.is_main:
                from lorarec.monitoring.discovery import clear_rank_endpoints

                clear_rank_endpoints(self.run_dir)
            self.metrics.close()
        s.shutdown()

    def facts(self) -> dict[str, Any]:
        """What the run is and did, for its summary."""
        s = self.strategy
        return {
            "job": self.cfg.job,
            "adapter": adapter_label(self.cfg),
            "steps": self.global_step,
            "samples": self.samples_seen,
            "tokens": self.tokens_seen,
            "world_size": s.world_size,
            "parameters": self.n_params,
            "trainable_parameters": self.n_trainable,
            "param_bytes_per_rank": self.param_bytes,
            "backbone_param_bytes_per_rank": self.param_bytes_backbone,
            "zero_stage": s.zero_stage,
            "peak_matmul_flops_per_rank": self.peak_flops,
        }


class _PhaseTimer:
    """Seconds spent in each named part of a phase (``timer("name")`` ends that part)."""

    def __init__(self):
        self.parts: list[tuple[str, float]] = []
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, now - self.last))
        self.last = now

    def summary(self) -> str:
        return ", ".join(f"{name} {sec:.1f} s" for name, sec in self.parts)


def check_resume_shape(
    state: dict, ckpt: Path, world_size: int, micro_batch_size: int, accumulation: int
) -> None:
    """Refuse (one line) to resume ``ckpt`` with another global batch: its data position
    (epoch, step) and LR schedule count steps of the global batch it was written with. The
    number of ranks may change (the checkpoint is then loaded through DeepSpeed's universal
    format): every optimizer step still covers the same samples, since the sample stream
    assigns a step's samples the same way whatever its split between ranks and accumulation."""
    written_world = state.get("world_size")
    written = state.get("global_batch")
    if written is None:  # saved before lorarec recorded it
        if written_world == world_size:
            return
        raise ConfigError(
            f"--resume: {ckpt} was written by {written_world} ranks and does not record its "
            f"global batch (an older lorarec); resume it with {written_world} ranks"
        )
    now = world_size * micro_batch_size * accumulation
    if written == now:
        return

    def ranks(n):
        return f"{n} rank" + ("" if n == 1 else "s")

    hint = ""
    if written % (world_size * micro_batch_size) == 0:
        hint = (
            f": with {ranks(world_size)} and micro-batch {micro_batch_size}, set "
            f"train.gradient_accumulation_steps={written // (world_size * micro_batch_size)}"
        )
    raise ConfigError(
        f"--resume: {ckpt} was written with a global batch of {written} samples "
        f"({ranks(written_world)}), this run's is {now} ({ranks(world_size)} x micro-batch "
        f"{micro_batch_size} x {accumulation} accumulation steps); keep the global batch{hint}"
    )


def recipe_main(
    cfg: RunConfig, run_dir: Path, resume: bool, evaluate: bool = False, adapter: str | None = None
) -> None:
    """A rank's job: train (set up, train, export, evaluate with ``train.evaluate``, clean up),
    or with ``evaluate`` only evaluate the adapter saved in ``adapter`` (None: zero-shot)."""
    recipe = LoraRecipe(cfg, run_dir, resume)
    if evaluate:
        phases = {
            "setup": lambda: recipe.setup_evaluation(adapter),
            "evaluate": recipe.evaluate,
            "shutdown": recipe.strategy.shutdown,
        }
    else:
        phases = {
            "setup": recipe.setup,
            "train": recipe.train,
            "export": recipe.export,
            "evaluate": recipe.evaluate,
            "cleanup": recipe.cleanup,
        }
    for name, phase in phases.items():
        start = time.perf_counter()
        phase()
        log.info("%s: %.1f s", name, time.perf_counter() - start)
