"""From the run config to a PEFT model with the configured adapter. What the adapter reads
(the frozen SASRec, the collaborative node embeddings, MiniLM title features) is trained and
cached before any rank starts (:mod:`lorarec.classic.inputs`); ranks only load it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lorarec.trainer.conditioning import GRAPH_ADAPTERS, collab_tokens

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
            from lorarec.classic.collab import ensure_collab_embeddings

            emb = ensure_collab_embeddings(data, g, cfg.train.seed, create=False)
            gnn.init_embeddings(torch.as_tensor(emb))
        if g.text_features:
            from lorarec.classic.text_features import ensure_text_features

            with torch.no_grad():
                gnn.text_features.copy_(torch.as_tensor(ensure_text_features(data, create=False)))
    if cfg.train.adapter != "lora" or collab_tokens(cfg):
        from lorarec.adapters import enable_conditioning_kwarg

        enable_conditioning_kwarg(model)
    return model


def check_adapter_dir(adapter: str | Path, cfg) -> str:
    """The PEFT type of the adapter saved in ``adapter``, which must be the one
    ``cfg.train.adapter`` names (``collab``: ``lora`` with ``train.lora.collab_tokens``)."""
    from lorarec.core.errors import ConfigError
    from lorarec.trainer.conditioning import adapter_label

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        kind = str(json.loads(config_file.read_text()).get("peft_type", "")).lower()
    except (ValueError, AttributeError):
        raise ConfigError(f"{config_file}: not a PEFT adapter config (not a JSON object)") from None
    label = "lora+collab" if kind == "collab" else kind
    if label != adapter_label(cfg):
        raise ConfigError(
            f"{config_file}: the adapter is {label!r} but train.adapter is {adapter_label(cfg)!r}"
        )
    return kind


def load_adapter_weights(model, adapter: str | Path) -> None:
    """Load the weights saved in ``adapter`` into the PEFT ``model`` that
    :func:`attach_adapter` built from the same config, before the engine partitions them. A
    weight the model does not have, or of another shape, is an error naming it."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    from lorarec.core.errors import ConfigError

    weights = load_peft_weights(str(adapter), device="cpu")
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # a shape mismatch: another rank, width or target module
        raise ConfigError(
            f"{adapter}: its weights do not fit the adapter this config builds "
            f"({str(exc).splitlines()[0][:300]})"
        ) from None
    if result.unexpected_keys:
        raise ConfigError(
            f"{adapter}: {len(result.unexpected_keys)} weights the adapter this config builds "
            f"does not have, e.g. {result.unexpected_keys[0]}"
        )
