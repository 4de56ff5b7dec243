"""Non-LLM baselines scored on the same fixed candidates: random and popularity."""

from __future__ import annotations

import numpy as np

from lorarec.trainer.sasrec import training_sequences


def item_popularity(train_samples: list[dict], num_items: int) -> np.ndarray:
    """Interaction counts of every item in the training sequences."""
    counts = np.zeros(num_items, dtype=np.float64)
    for seq in training_sequences(train_samples):
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
    return counts


def popularity_scores(samples: list[dict], popularity: np.ndarray) -> np.ndarray:
    cands = np.array([s["candidates"] for s in samples])
    return popularity[cands]


def random_scores(samples: list[dict], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((len(samples), len(samples[0]["candidates"])))
