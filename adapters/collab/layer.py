"""Collab tokens (the README's Adapters table; ``train.adapter: lora`` with
``train.lora.collab_tokens: true``): plain LoRA whose prompt carries the collaborative
embeddings of its user and items as input tokens, the design of CoLLM.

    h = W x + s * B (A dropout(x))                          s = alpha / r, B = 0 at the start
    e_t = projector( T[node_t] )   at every user / item placeholder token t

``T`` (nodes, node_dim) is the frozen collaborative table (LightGCN-propagated embeddings of
users ``0..U-1`` and items ``U + i``), passed with each batch's conditioning and never a
parameter: it is rebuilt from the cached collaborative embeddings, not saved with the adapter.
The projector (node_dim -> hidden -> hidden, as iLoRA's hybrid prompt) is shared by all
placeholders and trained with the LoRA factors. Against GraphLoRA this keeps the collaborative
signal and drops the graph network inside the LoRA pathway.

Conditioning: ``item_index`` (global node id at placeholder tokens, -1 elsewhere) and
``item_table`` (the frozen table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorarec.adapters.ilora.layer import Projector, placeholder_embeddings
from lorarec.adapters.tuner import (
    AdapterConfig,
    AdapterLayer,
    AdapterLinear,
    AdapterTuner,
    extend_peft_type,
    register_method,
)

extend_peft_type("COLLAB")


@dataclass
class CollabConfig(AdapterConfig):
    node_dim: int = field(default=64, metadata={"help": "width of the collaborative table"})
    hidden_size: int = field(default=0, metadata={"help": "backbone width (0: the model's)"})
    method: str = "collab"


class CollabLayer(AdapterLayer):
    prefix = "collab_"
    adapter_layer_names = ("collab_bank",)


class CollabLinear(AdapterLinear, CollabLayer):
    def delta(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        return self.low_rank(name, x)  # B (A x): PEFT LoRA's update


class CollabModel(AdapterTuner):
    prefix = "collab_"
    tuner_layer_cls = CollabLayer
    layer_cls = CollabLinear
    shared_names = ("projector",)

    def make_shared(self, what: str, config) -> Projector:
        hidden = config.hidden_size or self.model.get_input_embeddings().embedding_dim
        return Projector(config.node_dim, hidden)

    def replaces_embeddings(self, name: str) -> bool:
        return True

    def _derive(self, name: str, cond, forward: dict) -> dict:
        if not forward or forward["incremental"]:
            return {}  # the layers read nothing; decoding steps have no placeholder tokens
        cond.require("collab", "item_index", "item_table")
        dense, mask = placeholder_embeddings(
            self.shared("projector")[name], cond, forward, "collab"
        )
        return {"token_embeddings": dense, "token_mask": mask}


register_method("collab", CollabConfig, CollabModel)
