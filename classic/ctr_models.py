"""Label-trained CTR baselines: an item's smoothed like-rate, logistic matrix factorisation
(``mf``) and a DIN-style model (``din``, the Deep Interest Network of Zhou et al. 2018, the CTR
model RecLoRA uses as its CRM).

* ``like_rate``: ``(likes + m * global_rate) / (count + m)`` of the target item over the train
  split's pairs (``m`` = :data:`LIKE_RATE_PRIOR`).
* ``mf``: ``p = sigmoid(b + b_u + b_i + <p_u, q_i>)``; samples without a user (``user`` -1) get
  the item terms only.
* ``din``: item embeddings (plus an embedding of each history item's rating, where the data
  has ratings); a local activation unit (an MLP over ``[h, t, h - t, h * t]``) weighs each of
  the last ``history_len`` history items ``h`` against the target ``t`` (no softmax, padding
  masked); the weighted sum, the target's embedding and the user's (data with users) go
  through an MLP to one logit.

``mf`` and ``din`` are trained with binary cross-entropy on the train split's labels (Adam,
mini-batches, L2 on the embedding rows a batch uses), keeping the epoch with the best
validation AUC (early stopping after ``patience`` epochs without a better one); seeded and
deterministic. :func:`ensure_ctr_model` caches them in ``$LORAREC_HOME/<kind>/<key>``
(safetensors), keyed by the prepared data's manifest and the settings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LIKE_RATE_PRIOR = 5.0
"""The prior weight ``m`` of :func:`like_rates` (pseudo-pairs at the global like rate)."""


def like_rates(train_samples: list[dict], num_items: int, prior: float = LIKE_RATE_PRIOR):
    """Every item's like rate over the training pairs, smoothed towards the global rate."""
    items = np.array([s["target"] for s in train_samples], dtype=np.int64)
    labels = np.array([s["label"] for s in train_samples], dtype=np.float64)
    likes = np.bincount(items, weights=labels, minlength=num_items)
    counts = np.bincount(items, minlength=num_items).astype(np.float64)
    rate = labels.mean() if len(labels) else 0.5
    return (likes + prior * rate) / (counts + prior)


# ------------------------------------------------------------------------- inputs


@dataclass
class CTRTensors:
    """Samples as tensors: ``user`` (-1: none), ``target``, ``label``; ``history`` (item id + 1,
    left-padded with 0) and ``ratings`` (rating bucket + 1, 0 where padded or unrated)."""

    user: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor
    history: torch.Tensor
    ratings: torch.Tensor

    def __len__(self) -> int:
        return len(self.target)

    def take(self, idx: torch.Tensor) -> CTRTensors:
        return CTRTensors(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def rating_values(train_samples: list[dict], max_buckets: int = 16) -> list[float]:
    """The rating buckets' lower edges: the distinct history ratings of the train split (at
    most ``max_buckets`` of them, else quantiles); empty when the data has no ratings."""
    seen = [r for s in train_samples for r in s.get("history_ratings") or ()]
    if not seen:
        return []
    values = np.unique(np.asarray(seen, dtype=np.float64))
    if len(values) > max_buckets:
        values = np.unique(np.quantile(seen, np.linspace(0, 1, max_buckets)))
    return values.tolist()


def ctr_tensors(samples: list[dict], history_len: int, ratings: list[float]) -> CTRTensors:
    """The samples' tensors; histories keep their last ``history_len`` items (the width is
    the longest history kept)."""
    hists = [list(s["history"])[-history_len:] if history_len > 0 else [] for s in samples]
    lens = np.array([len(h) for h in hists], dtype=np.int64)
    n, width = len(samples), max(int(lens.max(initial=0)), 1)
    total = int(lens.sum())
    rows = np.repeat(np.arange(n), lens)
    starts = np.cumsum(lens) - lens
    cols = width - np.repeat(lens, lens) + (np.arange(total) - np.repeat(starts, lens))
    hist = np.zeros((n, width), dtype=np.int64)
    rat = np.zeros_like(hist)
    hist[rows, cols] = np.fromiter(chain.from_iterable(hists), np.int64, total) + 1
    if ratings and total:
        nan = float("nan")
        flat = np.fromiter(
            chain.from_iterable(
                r[-len(h) :]
                if len(r := s.get("history_ratings") or ()) >= len(h)
                else [nan] * len(h)
                for s, h in zip(samples, hists)
                if h
            ),
            np.float64,
            total,
        )
        bucket = np.clip(np.searchsorted(np.asarray(ratings), flat, side="right"), 1, len(ratings))
        rat[rows, cols] = np.where(np.isnan(flat), 0, bucket)
    return CTRTensors(
        torch.as_tensor([s["user"] for s in samples], dtype=torch.long),
        torch.as_tensor([s["target"] for s in samples], dtype=torch.long),
        torch.as_tensor([s.get("label", 0) for s in samples], dtype=torch.float32),
        torch.as_tensor(hist),
        torch.as_tensor(rat),
    )


# ------------------------------------------------------------------------- models


@dataclass(frozen=True)
class CTRSettings:
    dim: int = 32
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    l2: float = 1e-5
    """Weight of the squared norms of the embedding rows a batch uses (per sample)."""
    patience: int = 3
    seed: int = 42
    history_len: int = 50
    """``din``: history items pooled (the last ones)."""
    attention: int = 36
    """``din``: hidden units of the local activation unit."""
    hidden: tuple[int, ...] = (80, 40)
    """``din``: hidden units of the output MLP."""


# Chosen on ML-100K (ctr and ctr_global): a minute or less of training on 2 CPU cores.
MF_SETTINGS = CTRSettings(dim=32, epochs=30, batch_size=2048, lr=2e-2, l2=3e-2, patience=3)
DIN_SETTINGS = CTRSettings(
    dim=32, epochs=10, batch_size=1024, lr=2e-3, l2=1e-6, patience=2, attention=16
)


class LogisticMF(nn.Module):
    """``sigmoid(b + b_u + b_i + <p_u, q_i>)``; user row 0 (no user) is zero and stays so."""

    def __init__(self, num_users: int, num_items: int, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.user_bias = nn.Embedding(num_users + 1, 1, padding_idx=0)
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_vec = nn.Embedding(num_users + 1, dim, padding_idx=0)
        self.item_vec = nn.Embedding(num_items, dim)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        for emb in (self.user_vec, self.item_vec):
            nn.init.normal_(emb.weight, std=0.05)
        with torch.no_grad():
            self.user_vec.weight[0].zero_()

    def forward(self, b: CTRTensors) -> torch.Tensor:
        u = b.user + 1
        dot = (self.user_vec(u) * self.item_vec(b.target)).sum(-1)
        return self.bias + self.user_bias(u)[:, 0] + self.item_bias(b.target)[:, 0] + dot

    def penalty(self, b: CTRTensors) -> torch.Tensor:
        u = b.user + 1
        return self.user_vec(u).pow(2).sum() + self.item_vec(b.target).pow(2).sum()


class DIN(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_ratings: int,
        dim: int,
        attention: int,
        hidden: tuple[int, ...],
    ):
        super().__init__()
        self.item = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.rating = nn.Embedding(num_ratings + 1, dim, padding_idx=0) if num_ratings else None
        self.user = nn.Embedding(num_users + 1, dim, padding_idx=0) if num_users else None
        self.attention = nn.Sequential(
            nn.Linear(4 * dim, attention), nn.PReLU(), nn.Linear(attention, 1)
        )
        layers: list[nn.Module] = []
        width = dim * (3 if self.user is not None else 2)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        for emb in (self.item, self.rating, self.user):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.05)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def forward(self, b: CTRTensors) -> torch.Tensor:
        h = self.item(b.history)
        if self.rating is not None:
            h = h + self.rating(b.ratings)
        t = self.item(b.target + 1)
        # The activation unit's first layer over [h, t, h - t, h * t], computed without
        # building that (B, L, 4d) input: W [h, t, h - t, h * t] = (W_h + W_d) h + (W_t - W_d) t
        # + W_p (h * t).
        first, rest = self.attention[0], self.attention[1:]
        w_h, w_t, w_d, w_p = first.weight.split(h.shape[-1], dim=1)
        pre = h @ (w_h + w_d).T + (h * t[:, None]) @ w_p.T
        pre = pre + (t @ (w_t - w_d).T + first.bias)[:, None]
        weight = rest(pre)[..., 0]
        weight = weight * (b.history > 0)  # padding takes no part
        pooled = (weight[..., None] * h).sum(1)
        feats = [pooled, t] + ([self.user(b.user + 1)] if self.user is not None else [])
        return self.mlp(torch.cat(feats, -1))[:, 0]

    def penalty(self, b: CTRTensors) -> torch.Tensor:
        out = self.item(b.history).pow(2).sum() + self.item(b.target + 1).pow(2).sum()
        if self.user is not None:
            out = out + self.user(b.user + 1).pow(2).sum()
        return out


def build_model(kind: str, shape: dict[str, Any], s: CTRSettings) -> nn.Module:
    if kind == "mf":
        return LogisticMF(shape["num_users"], shape["num_items"], s.dim)
    if kind == "din":
        n_ratings = len(shape["rating_values"])
        return DIN(shape["num_users"], shape["num_items"], n_ratings, s.dim, s.attention, s.hidden)
    raise ValueError(f"unknown CTR model {kind!r}")


# ----------------------------------------------------------------------- training


@contextmanager
def _one_thread():
    """Run torch on one intra-op thread: these models' operations are small, and several
    threads made them up to 40 times slower on a busy machine; the results do not depend on
    the machine's core count either."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def predict(model: nn.Module, t: CTRTensors, batch_size: int = 4096) -> np.ndarray:
    """P(like) of every sample."""
    was_training = model.training
    model.eval()
    with _one_thread():
        out = [
            torch.sigmoid(model(t.take(torch.arange(i, min(i + batch_size, len(t))))))
            for i in range(0, len(t), batch_size)
        ]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def fit(
    build: Callable[[], nn.Module],
    train: CTRTensors,
    valid: CTRTensors,
    s: CTRSettings,
    progress: bool = False,
    name: str = "ctr",
) -> tuple[nn.Module, dict]:
    """Train the model ``build()`` makes with BCE on ``train``'s labels; keep the epoch with
    the best AUC on ``valid`` (stop after ``s.patience`` epochs without a better one). The
    global torch RNG is left as it was."""
    from tqdm import tqdm

    from lorarec.evaluation.metrics import auc

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(s.seed)
        model = build()
        g = torch.Generator().manual_seed(s.seed)
        opt = torch.optim.Adam(model.parameters(), lr=s.lr)
        best_auc, best_epoch, best_state = float("nan"), 0, None
        history = []
        bar = tqdm(range(s.epochs), desc=name, disable=not progress)
        for epoch in bar:
            model.train()
            order = torch.randperm(len(train), generator=g)
            total = 0.0
            for start in range(0, len(order), s.batch_size):
                b = train.take(order[start : start + s.batch_size])
                loss = F.binary_cross_entropy_with_logits(model(b), b.label, reduction="sum")
                opt.zero_grad(set_to_none=True)
                ((loss + s.l2 * model.penalty(b)) / len(b)).backward()
                opt.step()
                total += loss.item()
            valid_auc = auc(valid.label.numpy(), predict(model, valid)) if len(valid) else np.nan
            history.append({"epoch": epoch + 1, "loss": total / len(train), "valid_auc": valid_auc})
            bar.set_postfix(loss=f"{total / len(train):.4f}", valid_auc=f"{valid_auc:.4f}")
            if best_state is None or valid_auc > best_auc or np.isnan(best_auc):
                best_auc, best_epoch = valid_auc, epoch + 1
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch + 1 - best_epoch >= s.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    summary = {
        "best_epoch": best_epoch,
        "best_valid_auc": None if np.isnan(best_auc) else float(best_auc),
        "epochs_run": len(history),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model, summary


def train_ctr_model(
    kind: str,
    train_samples: list[dict],
    valid_samples: list[dict],
    num_users: int,
    num_items: int,
    settings: CTRSettings | None = None,
    progress: bool = False,
) -> tuple[nn.Module, dict, dict]:
    """Train ``mf`` or ``din``; returns the model, its shape (what rebuilds it) and the
    training summary."""
    s = settings or {"mf": MF_SETTINGS, "din": DIN_SETTINGS}[kind]
    shape = {"num_users": num_users, "num_items": num_items, "rating_values": []}
    if kind == "din":
        shape["rating_values"] = rating_values(train_samples)
    hist_len = s.history_len if kind == "din" else 0
    train = ctr_tensors(train_samples, hist_len, shape["rating_values"])
    valid = ctr_tensors(valid_samples, hist_len, shape["rating_values"])
    model, summary = fit(lambda: build_model(kind, shape, s), train, valid, s, progress, kind)
    return model, shape, summary


def ctr_model_scores(
    model: nn.Module, kind: str, shape: dict, s: CTRSettings, samples: list[dict]
) -> np.ndarray:
    """P(like) of each sample's target."""
    hist_len = s.history_len if kind == "din" else 0
    return predict(model, ctr_tensors(samples, hist_len, shape["rating_values"]))


def ensure_ctr_model(
    data,
    kind: str,
    settings: CTRSettings,
    train: Callable[[], list[dict]],
    progress: bool = False,
) -> tuple[nn.Module, dict, dict]:
    """The ``mf`` or ``din`` trained on ``data`` with ``settings``: loaded from
    ``$LORAREC_HOME/<kind>/<key>`` (the key: the manifest, the task and the settings), or
    trained (``train()`` gives the train split) and cached there. Returns the model, its
    shape and the training summary."""
    from safetensors.torch import load_file, save_file

    from lorarec.core.io import atomic_path

    key = json.loads(json.dumps(data.cache_key(task=data.task, **{kind: asdict(settings)})))
    path = data.cache_dir(kind, key)
    if (path / "config.json").is_file():
        meta = json.loads((path / "config.json").read_text())
        if meta.get("key") == key:
            log.info("%s: reusing %s", kind, path)
            model = build_model(kind, meta["shape"], settings)
            model.load_state_dict(load_file(path / "model.safetensors"))
            model.eval()
            return model, meta["shape"], meta["train"]
    model, shape, summary = train_ctr_model(
        kind,
        train(),
        data.samples("valid"),
        data.num_users,
        data.num_items,
        settings,
        progress,
    )
    with atomic_path(path, keep_existing=True) as tmp:
        tmp.mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        meta = {"key": key, "shape": shape, "train": summary}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return model, shape, summary


def settings_for(kind: str, seed: int, history_len: int) -> CTRSettings:
    """The default settings of ``kind`` with the run's seed and history length."""
    base = {"mf": MF_SETTINGS, "din": DIN_SETTINGS}[kind]
    return replace(base, seed=seed, history_len=history_len)
