"""From the run config to a PEFT model with the configured adapter, and what it needs first.

``prepare_adapter_inputs`` runs in the launching process before any rank starts: it trains and
caches what the adapter reads (the frozen SASRec, the collaborative node embeddings, MiniLM
title features), so that ranks only load them and never race to create them.
"""

from __future__ import annotations

import logging

import torch

from lorarec.trainer.conditioning import GRAPH_ADAPTERS, SEQUENCE_ADAPTERS, collab_tokens

log = logging.getLogger(__name__)


def peft_config(cfg, data):
    """The PEFT config of ``cfg.train.adapter`` (``lora``: PEFT's own ``LoraConfig``; with
    ``train.lora.collab_tokens``, lorarec's ``collab`` method: the same LoRA plus a projector of
    the collaborative embeddings at the placeholder tokens)."""
    t, lc = cfg.train, cfg.train.lora
    common = dict(
        r=lc.rank,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        task_type="CAUSAL_LM",
    )
    if t.adapter == "lora" and not t.lora.collab_tokens:
        from peft import LoraConfig

        return LoraConfig(**common)
    import lorarec.adapters as A

    if collab_tokens(cfg):
        return A.CollabConfig(**common, node_dim=t.graph.node_dim)

    graph = dict(
        num_nodes=data.num_users + data.num_items,
        node_dim=t.graph.node_dim,
        text_dim=384 if t.graph.text_features else 0,
        gnn=t.graph.network,
        gnn_layers=t.graph.layers,
    )
    seq_width = cfg.sasrec.hidden_size
    if t.adapter == "graphlora":
        g = t.graphlora
        return A.GraphLoraConfig(**common, **graph, a=g.a, b=g.b, graph_layers=g.layers)
    if t.adapter == "graphmoe":
        g = t.graphmoe
        return A.GraphMoeConfig(**common, **graph, experts=g.experts, gate_hidden=g.gate_hidden)
    if t.adapter == "ilora":
        g = t.ilora
        return A.ILoraConfig(
            **common,
            experts=g.experts,
            gate_in=seq_width,
            gate_hidden=g.gate_hidden,
            scale=g.scale,
            hybrid_prompt=g.hybrid_prompt,
        )
    g = t.reclora
    return A.RecLoraConfig(
        **common,
        banks=g.banks,
        temperature=g.temperature,
        mixing=g.mixing,
        router_in=seq_width,
        router_hidden=g.router_hidden,
    )


def attach_adapter(model, cfg, data):
    """``get_peft_model`` with the configured adapter, its graph network initialised from the
    collaborative embeddings (and text features); the same initialisation on every rank."""
    from peft import get_peft_model

    torch.manual_seed(cfg.train.seed)
    model = get_peft_model(model, peft_config(cfg, data))
    if cfg.train.adapter in GRAPH_ADAPTERS:
        gnn = model.base_model.shared("gnn")["default"]
        g = cfg.train.graph
        if g.init != "random":
            from lorarec.trainer.collab import ensure_collab_embeddings

            emb = ensure_collab_embeddings(data, g, cfg.train.seed, create=False)
            gnn.init_embeddings(torch.as_tensor(emb))
        if g.text_features:
            from lorarec.trainer.text_features import ensure_text_features

            with torch.no_grad():
                gnn.text_features.copy_(torch.as_tensor(ensure_text_features(data, create=False)))
    if cfg.train.adapter != "lora" or collab_tokens(cfg):
        from lorarec.adapters import enable_conditioning_kwarg

        enable_conditioning_kwarg(model)
    return model


def load_sasrec(cfg, data, create: bool):
    from lorarec.core.errors import AssetError
    from lorarec.trainer.evaluate import ensure_sasrec, sasrec_cache_dir

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
        from lorarec.trainer.collab import ensure_collab_embeddings

        ensure_collab_embeddings(data, t.graph, t.seed, create=True)
    if t.adapter in GRAPH_ADAPTERS:
        if t.graph.init != "random":
            from lorarec.trainer.collab import ensure_collab_embeddings

            ensure_collab_embeddings(data, t.graph, t.seed, create=True)
        if t.graph.text_features:
            from lorarec.trainer.text_features import ensure_text_features

            ensure_text_features(data, create=True)
