"""SASRec (Kang & McAuley, 2018): a causal self-attention sequence recommender.

In lorarec it is a baseline and the frozen sequence encoder that drives iLoRA's gate and
RecLoRA's router. API:

* ``SASRec.item_embeddings()`` -> (num_items, d) item vectors;
* ``SASRec.sequence_representation(histories)`` -> (B, d), the state at the last position;
* ``SASRec.score(histories, candidates)`` -> (B, K) dot-product scores;
* ``save(dir)`` / ``SASRec.load(dir)``: ``config.json`` + ``model.safetensors``.

Histories are given as lists of internal item ids (oldest first); id ``i`` is stored as
``i + 1`` and 0 is padding (left-padded to ``max_len``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lorarec.core.io import atomic_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from lorarec.core.config import RunConfig
    from lorarec.data.prepared import PreparedData

log = logging.getLogger(__name__)


@dataclass
class SASRecShape:
    num_items: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


class SASRec(nn.Module):
    def __init__(self, shape: SASRecShape):
        super().__init__()
        self.shape = shape
        d = shape.hidden_size
        self.item_emb = nn.Embedding(shape.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(shape.max_len, d)
        self.dropout = nn.Dropout(shape.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            shape.num_heads,
            dim_feedforward=d,
            dropout=shape.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, shape.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(d))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # ------------------------------------------------------------------ inputs

    def pad(self, histories: list[list[int]]) -> torch.Tensor:
        """Left-pad (and truncate to the last ``max_len``) histories of internal ids."""
        L = self.shape.max_len
        out = torch.zeros(len(histories), L, dtype=torch.long)
        for row, hist in enumerate(histories):
            hist = hist[-L:]
            if hist:
                out[row, L - len(hist) :] = torch.as_tensor(hist, dtype=torch.long) + 1
        return out

    # ----------------------------------------------------------------- forward

    def encode(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, L) padded ids -> (B, L, d) causal states."""
        B, L = padded.shape
        positions = torch.arange(L, device=padded.device)
        x = self.item_emb(padded) * math.sqrt(self.shape.hidden_size) + self.pos_emb(positions)
        x = self.dropout(x) * (padded > 0).unsqueeze(-1)
        # Causal attention that skips padded keys; every position may attend to itself, so the
        # rows of (left) padding positions are never empty. Shape (B * heads, L, L).
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=padded.device), diagonal=1)
        eye = torch.eye(L, dtype=torch.bool, device=padded.device)
        blocked = (causal | (padded == 0)[:, None, :]) & ~eye
        mask = torch.zeros(B, L, L, dtype=x.dtype, device=padded.device).masked_fill(
            blocked, float("-inf")
        )
        h = self.encoder(x, mask=mask.repeat_interleave(self.shape.num_heads, dim=0))
        return self.norm(h)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight[1:]

    def sequence_representation(self, histories: list[list[int]] | torch.Tensor) -> torch.Tensor:
        padded = histories if isinstance(histories, torch.Tensor) else self.pad(histories)
        padded = padded.to(self.item_emb.weight.device)
        return self.encode(padded)[:, -1]

    def score(self, histories: list[list[int]], candidates: torch.Tensor) -> torch.Tensor:
        rep = self.sequence_representation(histories)
        cand = self.item_embeddings()[candidates.to(rep.device)]
        return torch.einsum("bd,bkd->bk", rep, cand)

    # -------------------------------------------------------------- save/load

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            tmp.mkdir()
            save_file(
                {k: v.contiguous() for k, v in self.state_dict().items()}, tmp / "model.safetensors"
            )
            (tmp / "config.json").write_text(
                json.dumps(
                    {**asdict(self.shape), **({"meta": extra} if extra else {})},
                    indent=2,
                    sort_keys=True,
                )
            )

    @classmethod
    def load(cls, path: str | Path) -> SASRec:
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("meta", None)
        model = cls(SASRecShape(**cfg))
        model.load_state_dict(load_file(path / "model.safetensors"))
        model.eval()
        return model


# --------------------------------------------------------------------- training


def training_sequences(samples: list[dict]) -> list[list[int]]:
    """Chronological item sequences of the training split, each interaction once.

    Samples of one user are consecutive and chronological, so a user's sequence is the first
    sample's history followed by every sample's target. Samples without users (the sequences
    format) are rebuilt the same way where they are prefix rows of one sequence, as in LLaRA's
    and iLoRA's files (each row's history is the previous row's history and target, truncated to
    the file's history length): a row continues the current sequence when its history is the
    sequence's last ``min(len(sequence), cap)`` items (``cap`` the longest history in the split);
    any other row starts a sequence of its own. So a file of prefix rows costs one pass over each
    user's sequence, not one per row.
    """
    cap = max((len(s["history"]) for s in samples), default=0)
    seqs: list[list[int]] = []
    current_user = None
    prefix: list[int] | None = None  # the sequence the next row without a user may continue
    for s in samples:
        hist = list(s["history"])
        if s["user"] >= 0:
            prefix = None
            if s["user"] == current_user:
                seqs[-1].append(s["target"])
            else:
                seqs.append([*hist, s["target"]])
                current_user = s["user"]
            continue
        current_user = None
        if prefix is not None and hist and len(hist) == min(len(prefix), cap):
            if prefix[-len(hist) :] == hist:
                prefix.append(s["target"])
                continue
        prefix = [*hist, s["target"]]
        seqs.append(prefix)
    return seqs


def _windows(seqs: list[list[int]], max_len: int) -> list[list[int]]:
    """Cut each sequence into windows of ``max_len + 1`` items from its end (input + next)."""
    out = []
    for seq in seqs:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(seq[start:end])
            end = start + 1 if start > 0 else 0
    return out


def train_sasrec(
    train_samples: list[dict],
    valid_samples: list[dict],
    num_items: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    dropout: float = 0.2,
    max_len: int = 50,
    epochs: int = 60,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 42,
    patience: int = 10,
    progress: bool = True,
    sequences: list[list[int]] | None = None,
) -> tuple[SASRec, dict]:
    """Train with full-softmax cross-entropy at every position of the training sequences
    (:func:`training_sequences`, or ``sequences`` when given); keep the epoch with the best
    validation NDCG@10 on the fixed candidates (early stopping after ``patience`` epochs). The
    summary has each epoch's loss, validation NDCG@10 and seconds."""
    from tqdm import tqdm

    from lorarec.evaluation.metrics import ndcg_at

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SASRec(SASRecShape(num_items, hidden_size, num_layers, num_heads, dropout, max_len))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if sequences is None:
        sequences = training_sequences(train_samples)
    windows = _windows(sequences, max_len)
    inputs = model.pad([w[:-1] for w in windows])
    labels = model.pad([w[1:] for w in windows]) - 1  # -1 = padding, ignored
    best = (-1.0, 0, None)
    history = []
    bar = tqdm(range(epochs), desc="sasrec", disable=not progress)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        order = rng.permutation(len(windows))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start : start + batch_size])
            h = model.encode(inputs[idx])
            y = labels[idx]
            mask = y >= 0
            logits = h[mask] @ model.item_embeddings().T
            loss = F.cross_entropy(logits, y[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * int(mask.sum())
            count += int(mask.sum())
        seconds = time.perf_counter() - started
        valid_ndcg = float(np.mean(ndcg_at(evaluate_ranks(model, valid_samples), 10)))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / max(count, 1),
                "valid_ndcg@10": valid_ndcg,
                "seconds": round(seconds, 3),
                "windows": len(windows),
            }
        )
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", valid_ndcg10=f"{valid_ndcg:.3f}")
        if valid_ndcg > best[0]:
            best = (valid_ndcg, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch + 1 - best[1] >= patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    return model, {"best_epoch": best[1], "best_valid_ndcg@10": best[0], "epochs": history}


@torch.no_grad()
def candidate_scores(model: SASRec, samples: list[dict], batch_size: int = 512) -> np.ndarray:
    """(N, K) SASRec scores of each sample's candidates."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        cands = torch.tensor([s["candidates"] for s in batch])
        scores.append(model.score([s["history"] for s in batch], cands).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(scores)


def evaluate_ranks(model: SASRec, samples: list[dict], batch_size: int = 512) -> np.ndarray:
    from lorarec.evaluation.metrics import target_ranks

    scores = candidate_scores(model, samples, batch_size)
    tgt = np.array([s["candidates"].index(s["target"]) for s in samples])
    return target_ranks(scores, tgt, [s["key"] for s in samples], "sasrec (validation)")


# ------------------------------------------------------------------ cache


def sasrec_cache_dir(
    data: PreparedData, cfg: RunConfig, subset: tuple[int, int] | None = None
) -> tuple[Path, dict]:
    """Where the SASRec trained for this prepared data and these settings is cached
    (``$LORAREC_HOME/sasrec/<key>``), and the key: the sha256 of the data's manifest (which
    holds the sha256 of every prepared file), the task and the SASRec settings (and
    ``subset``'s size and seed, for a SASRec trained on a training subset)."""
    extra = {} if subset is None else {"subset": {"size": subset[0], "seed": subset[1]}}
    key = data.cache_key(task=data.task, sasrec=vars(cfg.sasrec), **extra)
    return data.cache_dir("sasrec", key), key


def ensure_sasrec(
    data: PreparedData,
    cfg: RunConfig,
    train: Callable[[], list[dict]],
    progress: bool = True,
    subset: tuple[int, int] | None = None,
):
    """Load the SASRec trained for this data and config from the cache, or train and cache it;
    ``train()`` gives the training samples, read only when there is something to train.

    ``subset=(size, seed)``: trained only on the training samples the LLM trains on with
    ``train.max_samples=size`` and ``train.seed=seed``
    (:func:`lorarec.data.prepared.training_subset`, as the training stream picks them),
    each sample one sequence: its history followed by its target."""
    import json

    from lorarec.classic.sasrec import SASRec, train_sasrec
    from lorarec.data.prepared import training_subset

    path, key = sasrec_cache_dir(data, cfg, subset)
    if (path / "config.json").is_file():
        meta = json.loads((path / "config.json").read_text()).get("meta", {})
        if meta.get("key") == json.loads(json.dumps(key)):
            log.info("sasrec: reusing %s", path)
            return SASRec.load(path), meta.get("train", {})
    s = cfg.sasrec
    samples, sequences = train(), None
    if subset is not None:
        keep = training_subset(len(samples), *subset)
        samples = samples if keep is None else [samples[i] for i in keep]
        sequences = [[*x["history"], x["target"]] for x in samples]
    model, info = train_sasrec(
        samples,
        data.samples("valid"),
        data.num_items,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        dropout=s.dropout,
        max_len=s.max_len,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        weight_decay=s.weight_decay,
        seed=s.seed,
        progress=progress,
        sequences=sequences,
    )
    summary = {"best_epoch": info["best_epoch"], "best_valid_ndcg@10": info["best_valid_ndcg@10"]}
    if subset is not None:
        summary["train_samples"] = len(samples)
    model.save(path, extra={"key": key, "train": summary})
    return model, summary
