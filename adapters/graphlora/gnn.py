"""The graph network inside GraphLoRA's LoRA pathway: node inputs -> K rounds of message passing
over the batch's sampled subgraph -> rank-r node states ``g(node)``.

LightGCN (default): ``e^(k+1) = D^-1/2 A D^-1/2 e^(k)`` (PyG ``LGConv`` with the normalisation
given as edge weights), the mean of ``e^(0..K)``, then a linear map to rank ``r``. The weights use
the degrees of the whole training graph (passed in), not of the sampled subgraph, so a node's
state does not depend on how many of its neighbours were sampled. GCN (``GCNConv``) is an option.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class GraphEncoder(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        dim: int,
        rank: int,
        layers: int = 2,
        kind: Literal["lightgcn", "gcn"] = "lightgcn",
        text_features: torch.Tensor | None = None,
    ):
        super().__init__()
        from torch_geometric.nn import GCNConv, LGConv

        self.kind = kind
        self.embedding = nn.Embedding(num_nodes, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        in_dim = dim
        if text_features is not None:
            # frozen item-text features (e.g. MiniLM), concatenated to the learned ID embedding
            self.register_buffer("text_features", text_features.float(), persistent=False)
            in_dim += text_features.shape[1]
        else:
            self.text_features = None
        if kind == "lightgcn":
            self.convs = nn.ModuleList([LGConv(normalize=False) for _ in range(layers)])
        else:
            self.convs = nn.ModuleList(
                [GCNConv(in_dim, in_dim, normalize=False) for _ in range(layers)]
            )
        self.out = nn.Linear(in_dim, rank)

    def init_embeddings(self, weights: torch.Tensor) -> None:
        """Initialise the ID embeddings from a pre-trained collaborative model."""
        with torch.no_grad():
            self.embedding.weight.copy_(weights)

    def forward(
        self, nodes: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor
    ) -> torch.Tensor:
        """``nodes`` (N,) global ids of the subgraph, ``edge_index`` (2, E) local, ``edge_weight``
        (E,) = 1/sqrt(deg(u) deg(v)) over the full training graph. Returns (N, rank)."""
        x = self.embedding(nodes)
        if self.text_features is not None:
            x = torch.cat([x, self.text_features[nodes]], dim=-1)
        outs = [x]
        for conv in self.convs:
            x = conv(x, edge_index, edge_weight)
            if self.kind == "gcn":
                x = torch.relu(x)
            outs.append(x)
        h = torch.stack(outs).mean(0) if self.kind == "lightgcn" else x
        return self.out(h)


def symmetric_weights(edge_index_global: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(deg(u) deg(v))`` for each edge, from full-graph degrees (indexed by global id)."""
    d = degrees.float().clamp(min=1)
    return (d[edge_index_global[0]] * d[edge_index_global[1]]).rsqrt()
