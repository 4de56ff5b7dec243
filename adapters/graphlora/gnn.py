"""The graph network inside GraphLoRA's LoRA pathway: node inputs -> K rounds of message passing
over the batch's sampled subgraph -> rank-r node states ``g(node)``.

LightGCN (default): ``e^(k+1) = D^-1/2 A D^-1/2 e^(k)`` (PyG ``LGConv`` with the normalisation
given as edge weights), the mean of ``e^(0..K)``, then a linear map to rank ``r``. GCN
(``GCNConv``) and NGCF are options.

The subgraph is sampled (``train.graph.fanouts``): a node ``v`` that drew ``k_v`` of its ``d_v``
neighbours receives one directed message from each, weighted
``1/sqrt(d_u d_v) * d_v / k_v`` (:func:`edge_weights`). The degrees are those of the whole
training graph (less what the sample's leak-free cut hides), and the ``d_v / k_v`` factor makes
the sampled sum an unbiased estimate of the full-neighbourhood one: equal to it when
``k_v = d_v`` (fanout at least the degree), and equal in expectation over the draws otherwise
(for two layers exactly: the draws of different nodes and hops are independent). A node's
state therefore does not scale with the fanout. States are exact for the seeds (the placeholder
nodes) when the network has at most as many layers as the sampler has hops.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def _ngcf_conv_class():
    from torch_geometric.nn import MessagePassing

    class NGCFConv(MessagePassing):
        """NGCF propagation: ``LeakyReLU(W1 (e + A_hat e) + W2 (A_hat e * e))``."""

        def __init__(self, dim: int):
            super().__init__(aggr="add")
            self.w1 = nn.Linear(dim, dim)
            self.w2 = nn.Linear(dim, dim)

        def forward(self, x, edge_index, edge_weight):
            agg = self.propagate(edge_index, x=x, edge_weight=edge_weight)  # A_hat e
            return nn.functional.leaky_relu(self.w1(x + agg) + self.w2(agg * x), 0.2)

        def message(self, x_j, edge_weight):
            return edge_weight.unsqueeze(-1) * x_j

    return NGCFConv


class GraphEncoder(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        dim: int,
        rank: int,
        layers: int = 2,
        kind: Literal["lightgcn", "gcn", "ngcf"] = "lightgcn",
        text_features: torch.Tensor | None = None,
        text_dim: int = 0,
    ):
        super().__init__()
        from torch_geometric.nn import GCNConv, LGConv

        if kind not in ("lightgcn", "gcn", "ngcf"):
            raise ValueError(f"unknown graph network {kind!r} (lightgcn, gcn or ngcf)")
        self.kind = kind
        self.embedding = nn.Embedding(num_nodes, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        if text_features is not None:
            text_dim = text_features.shape[1]
        in_dim = dim + text_dim
        if text_dim:
            # frozen node text features (MiniLM embeddings of item titles; zero for users),
            # concatenated to the learned ID embedding; saved with the adapter
            self.register_buffer("text_features", torch.zeros(num_nodes, text_dim))
            if text_features is not None:
                self.text_features.copy_(text_features.float())
        else:
            self.text_features = None
        if kind == "lightgcn":
            self.convs = nn.ModuleList([LGConv(normalize=False) for _ in range(layers)])
        elif kind == "gcn":
            self.convs = nn.ModuleList(
                [GCNConv(in_dim, in_dim, normalize=False) for _ in range(layers)]
            )
        else:
            NGCFConv = _ngcf_conv_class()
            self.convs = nn.ModuleList([NGCFConv(in_dim) for _ in range(layers)])
        self.out = nn.Linear(in_dim, rank)

    def init_embeddings(self, weights: torch.Tensor) -> None:
        """Initialise the ID embeddings from a pre-trained collaborative model."""
        with torch.no_grad():
            self.embedding.weight.copy_(weights)

    def forward(
        self, nodes: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor
    ) -> torch.Tensor:
        """``nodes`` (N,) global ids of the subgraph, ``edge_index`` (2, E) local, directed
        (neighbour -> node that drew it), ``edge_weight`` (E,) from :func:`edge_weights`.
        Returns (N, rank)."""
        x = self.embedding(nodes)
        if self.text_features is not None:
            x = torch.cat([x, self.text_features[nodes].to(x.dtype)], dim=-1)
        edge_weight = edge_weight.to(x.dtype)
        outs = [x]
        for conv in self.convs:
            x = conv(x, edge_index, edge_weight)
            if self.kind == "gcn":
                x = torch.relu(x)
            outs.append(x)
        # LightGCN: the mean over layers; NGCF: the concatenation in the paper, a mean here so
        # that the output map's width does not grow with depth; GCN: the last layer
        h = torch.stack(outs).mean(0) if self.kind != "gcn" else x
        return self.out(h)


def edge_weights(
    edge_index: torch.Tensor, degrees: torch.Tensor, sampled: torch.Tensor
) -> torch.Tensor:
    """The weight of each directed edge ``u -> v`` (``edge_index[0]`` the neighbour,
    ``edge_index[1]`` the node that drew it): ``1/sqrt(d_u d_v) * d_v / k_v``, with ``d`` the
    (leak-free) full-graph degrees and ``k`` the number of neighbours each node drew, indexed
    like ``edge_index``. See the module docstring."""
    d = degrees.float().clamp(min=1)
    k = sampled.float().clamp(min=1)
    src, dst = edge_index[0], edge_index[1]
    return (d[src] * d[dst]).rsqrt() * d[dst] / k[dst]
