"""RecLoRA layer (METHODS.md section 2).

A bank of ``K`` meta-LoRAs of rank ``r``; a router per adapted module maps the sequential
recommender's user representation ``u`` (batch, c) to mixing weights

    w = softmax(router(u) / T),  router = LayerNorm -> Linear(c, 60) -> ReLU -> Dropout(0.1) -> Linear(60, K)

and, with ``mixing="weights"`` (the reference code, the default), mixes the factors per user:

    A_u = sum_k w_k A_k,  B_u = sum_k w_k B_k,  h = W x + s * B_u (A_u dropout(x))

With ``mixing="outputs"`` (the paper's text), ``h = W x + s * sum_k w_k B_k (A_k dropout(x))``.
``s = alpha / r``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lorarec.adapters.core import LowRankBank


class Router(nn.Module):
    def __init__(
        self,
        in_features: int,
        banks: int,
        hidden: int = 60,
        dropout: float = 0.1,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.temperature = temperature
        self.net = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, banks),
        )

    def forward(self, user: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(user) / self.temperature, dim=-1)


class RecLoraLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        banks: int,
        alpha: float,
        router_in: int,
        dropout: float = 0.0,
        temperature: float = 1.0,
        mixing: Literal["weights", "outputs"] = "weights",
        router_hidden: int = 60,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.bank = LowRankBank(base_layer.in_features, base_layer.out_features, rank, banks)
        self.router = Router(router_in, banks, router_hidden, temperature=temperature)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        self.mixing = mixing

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """``user``: (batch, c) the sequential recommender's representation of each sample's user."""
        w = self.router(user).to(x.dtype)
        return self.base_layer(x) + self.scaling * self.delta(self.dropout(x), w)

    def delta(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.mixing == "outputs":
            return self.bank.mixed(x, w)
        A_u = torch.einsum("bk,krd->brd", w, self.bank.A)  # (batch, r, d_in)
        B_u = torch.einsum("bk,kor->bor", w, self.bank.B)  # (batch, d_out, r)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, tokens, d_in)
        out = torch.bmm(torch.bmm(flat, A_u.transpose(1, 2)), B_u.transpose(1, 2))
        return out.reshape(*x.shape[:-1], out.shape[-1])
