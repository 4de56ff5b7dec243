"""iLoRA layer (METHODS.md section 3).

    h = W x + s * sum_i g_i B_i (A_i dropout(x))

``E`` experts of rank ``r / E`` each (total rank ``r``); ``g`` (batch, E) is one gate vector per
sequence, computed once per forward from the frozen SASRec state and shared by all layers and
tokens. ``s = alpha / r`` as plain LoRA of the same total rank; ``scale="reference"`` uses the
iLoRA reference code's ``alpha / (r / E)`` instead (E times larger).

All experts run batched (:meth:`LowRankBank.mixed`): one matmul for every expert's ``A``, one for
every ``B``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lorarec.adapters.core import LowRankBank


class ILoraLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        experts: int,
        alpha: float,
        dropout: float = 0.0,
        scale: Literal["lora", "reference"] = "lora",
    ):
        super().__init__()
        if rank % experts:
            raise ValueError(f"rank {rank} is not divisible by experts {experts}")
        self.base_layer = base_layer
        self.experts = experts
        self.bank = LowRankBank(
            base_layer.in_features, base_layer.out_features, rank // experts, experts
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank if scale == "lora" else alpha / (rank // experts)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``gate``: (batch, E) expert weights of each sample (rows sum to 1)."""
        return self.base_layer(x) + self.scaling * self.bank.mixed(self.dropout(x), gate)
