"""GraphLoRA layer (METHODS.md section 1).

    h = W x + s * B( a * A dropout(x) + b * g(node) )

``g(node)`` (batch, tokens, r) is the rank-r graph state of the node that each token stands for
(the user and item placeholder tokens), zero at every other token, where the layer is plain
LoRA. The graph network that computes it runs once per forward, outside the layers. ``a = 1.0``,
``b = 0.1`` and ``s = alpha / r`` as in the reference, where the scale was missing in the graph
layer; here it applies to both terms.
"""

from __future__ import annotations

import torch
from torch import nn

from lorarec.adapters.core import LowRankBank


class GraphLoraLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        a: float = 1.0,
        b: float = 0.1,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.bank = LowRankBank(base_layer.in_features, base_layer.out_features, rank, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor, node_state: torch.Tensor | None) -> torch.Tensor:
        """``node_state``: (batch, tokens, r), or None where no token stands for a node."""
        z = self.a * self.bank.down(self.dropout(x))
        if node_state is not None:
            z = z + self.b * node_state.to(z.dtype)
        return self.base_layer(x) + self.scaling * self.bank.up(z)


def scatter_node_states(node_index: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Dense (batch, tokens, r) shift from ``node_index`` (batch, tokens; -1 where a token stands
    for no node) into ``states`` (nodes, r), the graph network's output for the batch's subgraph."""
    out = states.new_zeros(*node_index.shape, states.shape[-1])
    mask = node_index >= 0
    out[mask] = states[node_index[mask]]
    return out
