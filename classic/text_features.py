"""Frozen text features of the graph's nodes: MiniLM (all-MiniLM-L6-v2) embeddings of the item
titles, mean-pooled and L2-normalised as sentence-transformers does; zero rows for users.

Computed once in the launching process (``lorarec fetch minilm`` first) and cached in
``$LORAREC_HOME/text/<key>``, keyed by the prepared data's manifest.
"""

from __future__ import annotations

import numpy as np
import torch


def embed_titles(titles: list[str], batch_size: int = 128) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    from lorarec.core.assets import asset_path

    path = asset_path("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(titles), batch_size):
            batch = tok(
                titles[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy().astype(np.float32)


def ensure_text_features(data, create: bool = True) -> np.ndarray:
    """(nodes, 384): zero rows for users, MiniLM title embeddings for items."""

    from safetensors.numpy import load_file, save_file

    from lorarec.core.errors import AssetError
    from lorarec.core.io import atomic_path

    path = data.cache_dir("text", data.cache_key(model="minilm"))
    file = path / "features.safetensors"
    if file.is_file():
        return load_file(str(file))["features"]
    if not create:
        raise AssetError(f"text features missing from {path}")
    items = embed_titles(data.titles)
    features = np.zeros((data.num_users + len(items), items.shape[1]), np.float32)
    features[data.num_users :] = items
    with atomic_path(path, keep_existing=True) as tmp:
        tmp.mkdir()
        save_file({"features": features}, str(tmp / "features.safetensors"))
    return features
