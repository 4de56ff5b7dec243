"""The low-rank core shared by every adapter family.

Notation (METHODS.md): a frozen projection ``W`` (d_in -> d_out), input ``x`` (batch, tokens,
d_in), factors ``A_k`` (d_in -> r) and ``B_k`` (r -> d_out), scale ``s``. A bank stacks ``K``
factor pairs; ``B`` starts at zero, so an adapter starts as the backbone.

Applying all ``K`` pairs to ``x`` with per-sample weights ``g`` (batch, K) is

    sum_k g_k B_k (A_k x)  =  B_cat ( (A_cat x) * expand(g) )

where ``A_cat`` (K*r x d_in) and ``B_cat`` (d_out x K*r) concatenate the factors and
``expand(g)`` repeats each weight over its ``r`` rank components: two matmuls whatever ``K`` is,
the same cost as one LoRA of rank ``K*r``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankBank(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, banks: int = 1):
        super().__init__()
        if rank < 1 or banks < 1:
            raise ValueError(f"rank and banks must be at least 1, got rank={rank}, banks={banks}")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.banks = rank, banks
        self.A = nn.Parameter(torch.empty(banks, rank, in_features))
        self.B = nn.Parameter(torch.zeros(banks, out_features, rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PEFT's LoRA initialisation: kaiming-uniform A (a = sqrt(5), as nn.Linear), zero B.
        for k in range(self.banks):
            nn.init.kaiming_uniform_(self.A.data[k], a=math.sqrt(5))
        nn.init.zeros_(self.B)

    @property
    def A_cat(self) -> torch.Tensor:
        """(K*r, d_in): every bank's A, stacked."""
        return self.A.reshape(self.banks * self.rank, self.in_features)

    @property
    def B_cat(self) -> torch.Tensor:
        """(d_out, K*r): every bank's B, side by side."""
        return self.B.permute(1, 0, 2).reshape(self.out_features, self.banks * self.rank)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """``A_cat x``: (..., d_in) -> (..., K*r)."""
        return x @ self.A_cat.T

    def up(self, z: torch.Tensor) -> torch.Tensor:
        """``B_cat z``: (..., K*r) -> (..., d_out)."""
        return z @ self.B_cat.T

    def expand(self, weights: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-sample bank weights (batch, K) -> (batch, 1, ..., K*r) to scale ``down(x)``."""
        w = weights.repeat_interleave(self.rank, dim=-1)
        return w.reshape(w.shape[0], *([1] * (ndim - 2)), w.shape[-1])

    def mixed(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k g_k B_k (A_k x)`` for per-sample weights ``g`` (batch, K), batched."""
        z = self.down(x)
        return self.up(z * self.expand(weights.to(z.dtype), z.ndim))

    def mixed_reference(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The same, as a straightforward loop over banks (for tests and benchmarks)."""
        out = 0
        for k in range(self.banks):
            g = weights[:, k].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
            out = out + g * ((x @ self.A[k].T) @ self.B[k].T)
        return out
