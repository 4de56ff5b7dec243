"""What a run writes about itself, on rank 0: one line per step (``metrics.jsonl``, with
``train.log_samples`` the keys of each step's samples in ``samples.jsonl``), the progress bar,
and at the end ``train_summary.json`` (totals, throughput, final values, every rank's memory by
phase) and ``loss.png``. The recipe hands it records; it decides nothing about training."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool, total_steps: int, start_step: int):
        self.run_dir, self.is_main = run_dir, is_main
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.total_steps, self.start_step = total_steps, start_step
        self.bar = None
        if is_main:  # a resumed run rewrites what came after its checkpoint
            _truncate_log(self.metrics_path, start_step)
            _truncate_log(self.samples_path, start_step)

    def open_progress(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc="train",
            disable=not self.is_main,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def step(self, record: dict[str, Any], epoch: int, slots: list[list[dict]] | None) -> None:
        """One optimizer step's ``record``; ``slots``: its samples, by micro-batch slot, to log
        their keys (None: not logged)."""
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if slots is not None:
            keys = [[x["key"] for x in slot] for slot in slots]
            with open(self.samples_path, "a") as fh:
                fh.write(json.dumps({"step": record["step"], "epoch": epoch, "slots": keys}) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}"
            )
            self.bar.update(1)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def records(self) -> list[dict]:
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]

    def finish(self, facts: dict[str, Any], ranks: list[dict]) -> None:
        """``train_summary.json`` and ``loss.png`` (rank 0)."""
        if not self.is_main:
            return
        from lorarec.core.io import write_json_atomic

        records = self.records()
        write_json_atomic(self.run_dir / "train_summary.json", train_summary(facts, records, ranks))
        plot_loss(records, self.run_dir / "loss.png")


def train_summary(facts: dict[str, Any], records: list[dict], ranks: list[dict]) -> dict[str, Any]:
    """Totals, mean throughput and final values of the run (``train_summary.json``): ``facts``
    (job, adapter, steps, samples, parameters, ...), then what the step ``records`` and every
    rank's own figures (``ranks``) give."""
    step_seconds = sum(r["step_seconds"] for r in records)
    last = records[-1] if records else {}
    return {
        **facts,
        "final_loss": last.get("loss"),
        "final_lr": last.get("lr"),
        "final_grad_norm": last.get("grad_norm"),
        "train_seconds": step_seconds,
        # totals over step time: the run's throughput (logged steps, resumed runs included)
        "tokens_per_s": sum(r["tokens"] for r in records) / step_seconds if records else None,
        "samples_per_s": sum(r["samples"] for r in records) / step_seconds if records else None,
        "mean_tokens_per_s": sum(r["tokens_per_s"] for r in records) / max(1, len(records)),
        "data_wait_fraction": sum(r["data_wait_seconds"] for r in records) / step_seconds
        if records
        else None,
        "mean_mfu": sum(r["mfu"] for r in records) / len(records) if records else None,
        "checkpoint_seconds": max(r["checkpoint_seconds"] for r in ranks),
        # over the whole run: set-up (loading) and training
        "peak_rss_bytes_per_rank": [
            max(
                r.get("peak_rss_bytes") or 0,
                r.get("peak_rss_setup_bytes") or 0,
                r.get("peak_rss_train_bytes") or 0,
            )
            for r in ranks
        ],
        # per rank: resident bytes before the model loads, and the peaks of set-up (loading,
        # engine) and of training (from the end of set-up; lifetime if peak_reset is false)
        "memory_per_rank": [
            {
                k: r.get(k)
                for k in (
                    "rss_before_model_bytes",
                    "peak_rss_setup_bytes",
                    "peak_device_setup_bytes",
                    "peak_reset",
                )
                if k in r
            }
            | _phase_peaks(r)
            for r in ranks
        ],
        "peak_device_bytes_per_rank": [r.get("device_bytes") for r in ranks]
        if "device_bytes" in ranks[0]
        else None,
        "graph_retries": sum(r["graph_retries"] for r in ranks),
        # the exporters' own cost on the busiest rank: metric updates in the training
        # thread plus CPU time answering scrapes
        "monitoring_seconds": max(
            r["metrics_update_seconds"] + r["metrics_scrape_cpu_seconds"] for r in ranks
        ),
        "metrics_update_seconds": max(r["metrics_update_seconds"] for r in ranks),
        "metrics_scrape_cpu_seconds": max(r["metrics_scrape_cpu_seconds"] for r in ranks),
    }


def _phase_peaks(r: dict) -> dict:
    """A rank's peaks of training and, if the run evaluated in the ranks, of evaluation (the
    peak at cleanup is the last phase's: evaluation's when there was one)."""
    evaluated = "peak_rss_train_bytes" in r
    out = {
        "peak_rss_train_bytes": r["peak_rss_train_bytes"] if evaluated else r.get("peak_rss_bytes")
    }
    if evaluated:
        out["peak_rss_eval_bytes"] = r.get("peak_rss_bytes")
        out["eval_param_bytes"] = r.get("eval_param_bytes")
    if "device_bytes" in r:
        out["peak_device_train_bytes"] = (
            r["peak_device_train_bytes"] if evaluated else r["device_bytes"]
        )
        if evaluated:
            out["peak_device_eval_bytes"] = r["device_bytes"]
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what came after)."""
    from lorarec.core.io import write_text_atomic

    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def plot_loss(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
