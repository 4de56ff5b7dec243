"""What an adapter reads, trained and cached before any rank starts.

``prepare_adapter_inputs`` runs in the launching process: it trains and caches the frozen
SASRec, the collaborative node embeddings and MiniLM title features the configured adapter
needs, so that ranks only load them (``create=False``) and never race to create them.
"""

from __future__ import annotations

from lorarec.trainer.conditioning import GRAPH_ADAPTERS, SEQUENCE_ADAPTERS, collab_tokens


def load_sasrec(cfg, data, create: bool):
    from lorarec.classic.sasrec import ensure_sasrec, sasrec_cache_dir
    from lorarec.core.errors import AssetError

    def train_samples() -> list[dict]:
        if not create:  # a rank: the launching process trains it
            raise AssetError(f"the frozen SASRec is missing from {sasrec_cache_dir(data, cfg)[0]}")
        return data.samples("train")

    model, _ = ensure_sasrec(data, cfg, train_samples)
    return model


def prepare_adapter_inputs(cfg, data) -> None:
    """Train and cache what the adapter needs, in the launching process."""
    t = cfg.train
    if t.adapter in SEQUENCE_ADAPTERS:
        load_sasrec(cfg, data, create=True)
    if collab_tokens(cfg):
        from lorarec.classic.collab import ensure_collab_embeddings

        ensure_collab_embeddings(data, t.graph, t.seed, create=True)
    if t.adapter in GRAPH_ADAPTERS:
        if t.graph.init != "random":
            from lorarec.classic.collab import ensure_collab_embeddings

            ensure_collab_embeddings(data, t.graph, t.seed, create=True)
        if t.graph.text_features:
            from lorarec.classic.text_features import ensure_text_features

            ensure_text_features(data, create=True)
