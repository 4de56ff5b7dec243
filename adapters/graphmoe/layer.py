"""GraphMoE (the README's Adapters table): a mixture of LoRA experts whose gate reads the
user's place in the graph.

    g = softmax( gate( GNN(subgraph)[user] ) )
    h = W x + s * sum_i g_i B_i (A_i dropout(x))

iLoRA's batched experts (``E`` of rank ``r / E``, ``s = alpha / r``), with the gate computed from
the user's node state of GraphLoRA's graph network over the batch's sampled subgraph instead of
the sequence recommender: graph structure chooses the experts. The graph network's output is
``node_dim_out`` wide (default ``r``); one gate vector per sample, shared by all layers. On data
without user ids (an item-item transition graph) the gate reads the mean state of the history's
item nodes instead of a user node.

Conditioning: ``graph`` and ``user_node`` ((batch,) user nodes, or (batch, m) history nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lorarec.adapters.conditioning import expand_batch
from lorarec.adapters.graphlora.layer import GraphConfigMixin, make_graph_encoder
from lorarec.adapters.ilora.layer import Gate, ILoraLayer, ILoraLinear
from lorarec.adapters.tuner import (
    AdapterConfig,
    AdapterTuner,
    extend_peft_type,
    register_method,
)

extend_peft_type("GRAPHMOE")


@dataclass
class GraphMoeConfig(GraphConfigMixin, AdapterConfig):
    experts: int = field(default=4)
    gate_hidden: int = field(default=64)
    node_dim_out: int = field(default=0, metadata={"help": "graph state width (0: r)"})
    method: str = "graphmoe"

    def __post_init__(self):
        super().__post_init__()
        if self.experts < 1 or self.r % self.experts:
            raise ValueError(f"graphmoe: r={self.r} must be a multiple of experts={self.experts}")
        if self.num_nodes < 1:
            raise ValueError("graphmoe: num_nodes must be set (users + items of the graph)")


class GraphMoeLayer(ILoraLayer):
    prefix = "graphmoe_"
    adapter_layer_names = ("graphmoe_bank",)

    def scale(self, config) -> float:
        return config.lora_alpha / config.r


class GraphMoeLinear(ILoraLinear, GraphMoeLayer):
    """iLoRA's update, ``sum_i g_i B_i (A_i x)``, with the graph-driven gate."""


def pool_states(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each sample's gate input: the state of its user node (``index`` (batch,)), or, on data
    without users, the mean state of its history's item nodes (``index`` (batch, m), -1 pads;
    a row without any reads zeros)."""
    if index.dim() == 1:
        return states[index]
    valid = (index >= 0).to(states.dtype)
    picked = states[index.clamp(min=0)] * valid.unsqueeze(-1)
    return picked.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


class GraphMoeModel(AdapterTuner):
    prefix = "graphmoe_"
    tuner_layer_cls = GraphMoeLayer
    layer_cls = GraphMoeLinear
    shared_names = ("gnn", "gate")

    def make_shared(self, what: str, config) -> nn.Module:
        width = config.node_dim_out or config.r
        if what == "gnn":
            return make_graph_encoder(config, width)
        return Gate(width, config.experts, config.gate_hidden)

    def _derive(self, name: str, cond, forward: dict) -> dict:
        cond.require("graphmoe", "graph", "user_node")
        g = cond.graph
        states = self.shared("gnn")[name](g.nodes, g.edge_index, g.edge_weight)
        user = pool_states(states, cond.user_node)
        if forward:
            user = expand_batch(user, forward["batch"], "user_node")
        return {"gate": self.shared("gate")[name](user)}


register_method("graphmoe", GraphMoeConfig, GraphMoeModel)
