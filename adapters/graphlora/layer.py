"""GraphLoRA (the README's Adapters table): a graph network inside the LoRA pathway.

    h = W x + s * B( a * A dropout(x) + b * g(node) )      at tokens that stand for a node
    h = W x + s * B( A dropout(x) )                         at every other token

``g(node)`` is the rank-r state of the user or item a placeholder token stands for, computed once
per forward by the graph network (:class:`~lorarec.adapters.graphlora.gnn.GraphEncoder`) over
the batch's sampled subgraph. ``s = alpha / r`` applies to both terms (the reference code left
the scale out of its graph layer). ``graph_layers`` picks the decoder layers that take the graph
term (the reference: one layer); the other adapted layers are plain LoRA.

Conditioning: ``graph`` and ``node_index`` (see :mod:`lorarec.adapters.conditioning`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorarec.adapters.conditioning import expand_batch
from lorarec.adapters.graphlora.gnn import GraphEncoder
from lorarec.adapters.tuner import (
    AdapterConfig,
    AdapterLayer,
    AdapterLinear,
    AdapterTuner,
    extend_peft_type,
    register_method,
)

extend_peft_type("GRAPHLORA")


@dataclass
class GraphConfigMixin:
    num_nodes: int = field(default=0, metadata={"help": "users + items of the graph"})
    node_dim: int = field(default=64, metadata={"help": "width of the learned node embeddings"})
    text_dim: int = field(default=0, metadata={"help": "width of frozen node text features"})
    gnn: str = field(default="lightgcn", metadata={"help": "lightgcn, gcn or ngcf"})
    gnn_layers: int = field(default=2)


@dataclass
class GraphLoraConfig(GraphConfigMixin, AdapterConfig):
    a: float = field(default=1.0, metadata={"help": "weight of A x at node tokens"})
    b: float = field(default=0.1, metadata={"help": "weight of the graph state g(node)"})
    graph_layers: list[int] | None = field(
        default=None, metadata={"help": "decoder layers with the graph term (None: all adapted)"}
    )
    method: str = "graphlora"

    def __post_init__(self):
        super().__post_init__()
        if self.num_nodes < 1:
            raise ValueError("graphlora: num_nodes must be set (users + items of the graph)")


def make_graph_encoder(config, out_dim: int) -> GraphEncoder:
    return GraphEncoder(
        config.num_nodes,
        config.node_dim,
        out_dim,
        layers=config.gnn_layers,
        kind=config.gnn,
        text_dim=config.text_dim,
    )


class GraphLoraLayer(AdapterLayer):
    prefix = "graphlora_"
    adapter_layer_names = ("graphlora_bank",)


class GraphLoraLinear(AdapterLinear, GraphLoraLayer):
    reference_per_sample = True  # the reference code handles each sample's node tokens alone

    def delta(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        cfg = self.settings[name]
        g = state["node_states"]  # (batch, tokens, r), zero where a token stands for no node
        in_graph = cfg.graph_layers is None or self.layer_index in cfg.graph_layers
        if g is None or not in_graph:
            return self.low_rank(name, x)  # B(A x)
        a = state["a"]  # a at node tokens, 1 elsewhere
        return self.low_rank(name, x, a=a, shift=cfg.b * g)  # B(a * A x + b * g(node))


class GraphLoraModel(AdapterTuner):
    prefix = "graphlora_"
    tuner_layer_cls = GraphLoraLayer
    layer_cls = GraphLoraLinear
    shared_names = ("gnn",)

    def make_shared(self, what: str, config) -> torch.nn.Module:
        return make_graph_encoder(config, config.r)

    def _derive(self, name: str, cond, forward: dict) -> dict:
        cond.require("graphlora", "graph", "node_index")
        cfg = self.peft_config[name]
        if forward.get("incremental"):  # tokens extending a cache stand for no node
            return {"node_states": None}
        graph = cond.graph
        states = self.shared("gnn")[name](graph.nodes, graph.edge_index, graph.edge_weight)
        index = cond.node_index
        if forward and index.shape[1] != forward["tokens"]:
            raise ValueError(
                f"graphlora: node_index covers {index.shape[1]} tokens, the input has "
                f"{forward['tokens']}"
            )
        if forward:
            index = expand_batch(index, forward["batch"], "node_index")
        mask = index >= 0
        dense = states.new_zeros(*index.shape, states.shape[-1])
        dense[mask] = states[index[mask]]
        a = None
        if cfg.a != 1.0:
            a = torch.where(mask, cfg.a, 1.0).unsqueeze(-1).to(states.dtype)
        return {"node_states": dense, "a": 1.0 if a is None else a}


register_method("graphlora", GraphLoraConfig, GraphLoraModel)
