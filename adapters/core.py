"""The low-rank core shared by every adapter family.

Notation (the README's Adapters section): a frozen projection ``W`` (d_in -> d_out), input ``x`` (batch, tokens,
d_in), factors ``A_k`` (d_in -> r) and ``B_k`` (r -> d_out), scale ``s``. A bank stacks ``K``
factor pairs; ``B`` starts at zero, so an adapter starts as the backbone.

Applying all ``K`` pairs to ``x`` with per-sample weights ``g`` (batch, K) is

    sum_k g_k B_k (A_k x)  =  B_cat ( (A_cat x) * expand(g) )

where ``A_cat`` (K*r x d_in) and ``B_cat`` (d_out x K*r) concatenate the factors and
``expand(g)`` repeats each weight over its ``r`` rank components: two matmuls whatever ``K`` is,
the same cost as one LoRA of rank ``K*r``.

The bank is always *called* (``bank(x, ...)``), never reached into from outside: under ZeRO-3
DeepSpeed gathers a module's partitioned parameters when its ``forward`` runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankBank(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, rank: int, banks: int = 1, zero_B: bool = True
    ):
        super().__init__()
        if rank < 1 or banks < 1:
            raise ValueError(f"rank and banks must be at least 1, got rank={rank}, banks={banks}")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.banks = rank, banks
        self.A = nn.Parameter(torch.empty(banks, rank, in_features))
        self.B = nn.Parameter(torch.zeros(banks, out_features, rank))
        self.reset_parameters(zero_B)

    def reset_parameters(self, zero_B: bool = True) -> None:
        # PEFT's LoRA initialisation: kaiming-uniform A (a = sqrt(5), as nn.Linear), zero B
        # (``zero_B=False``: random B, for tests that need an adapter that is not the identity).
        for k in range(self.banks):
            nn.init.kaiming_uniform_(self.A.data[k], a=math.sqrt(5))
        if zero_B:
            nn.init.zeros_(self.B)
        else:
            nn.init.normal_(self.B, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        a: float | torch.Tensor = 1.0,
        mixing: str = "outputs",
    ) -> torch.Tensor:
        """``B( a * (A x) * expand(g) + shift )``: the low-rank update of every family.

        ``weights`` (batch, K): per-sample bank weights (None: all ones); ``shift`` (..., K*r): an
        additive term in the rank space (GraphLoRA's node states); ``mixing="weights"`` mixes the
        factors per sample instead (RecLoRA): ``B_u (A_u x)`` with ``A_u = sum_k g_k A_k``.
        """
        if mixing == "weights" and weights is not None and self.banks > 1:
            return self.mixed_factors(x, weights)
        z = self.down(x)
        if isinstance(a, torch.Tensor) or a != 1.0:
            z = a * z
        if weights is not None:
            z = z * self.expand(weights.to(z.dtype), z.ndim)
        if shift is not None:
            z = z + shift.to(z.dtype)
        return self.up(z)

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

    def mixed_factors(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``B_u (A_u x)`` with per-sample factors ``A_u = sum_k g_k A_k``, ``B_u = sum_k g_k B_k``."""
        w = weights.to(self.A.dtype)
        A_u = torch.einsum("bk,krd->brd", w, self.A)  # (batch, r, d_in)
        B_u = torch.einsum("bk,kor->bor", w, self.B)  # (batch, d_out, r)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, tokens, d_in)
        out = torch.bmm(torch.bmm(flat, A_u.transpose(1, 2)), B_u.transpose(1, 2))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def reference(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        a: float | torch.Tensor = 1.0,
        mixing: str = "outputs",
        per_sample: bool = False,
    ) -> torch.Tensor:
        """What :meth:`forward` computes, written the straightforward way of the reference code:
        a Python loop over banks (experts), or over samples when factors are mixed per sample
        (or when ``per_sample``). For tests and benchmarks."""
        if per_sample and x.shape[0] > 1:

            def row(t, i):
                return t[i : i + 1] if isinstance(t, torch.Tensor) and t.ndim > 0 else t

            return torch.cat(
                [
                    self.reference(x[i : i + 1], row(weights, i), row(shift, i), row(a, i), mixing)
                    for i in range(x.shape[0])
                ]
            )
        if weights is None:
            weights = x.new_ones(x.shape[0], self.banks)
        if mixing == "weights" and self.banks > 1:
            rows = []
            for i in range(x.shape[0]):
                A_u = sum(weights[i, k] * self.A[k] for k in range(self.banks))
                B_u = sum(weights[i, k] * self.B[k] for k in range(self.banks))
                rows.append((x[i] @ A_u.T) @ B_u.T)
            return torch.stack(rows)
        out = 0
        for k in range(self.banks):
            g = weights[:, k].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
            z = a * (x @ self.A[k].T) * g
            if shift is not None:
                z = z + shift[..., k * self.rank : (k + 1) * self.rank]
            out = out + z @ self.B[k].T
        return out
