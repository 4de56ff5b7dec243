"""RecLoRA (the README's Adapters table): a bank of meta-LoRAs mixed per user.

    w = softmax( router(u) / T )      u: the sequence recommender over the long history
    A_u = sum_k w_k A_k,  B_u = sum_k w_k B_k,  h = W x + s * B_u (A_u dropout(x))

``K`` meta-LoRAs of rank ``r``, a router per adapted module
(``LayerNorm -> Linear(c, 60) -> ReLU -> Dropout(0.1) -> Linear(60, K)``), ``s = alpha / r``.
``mixing="weights"`` (the default, the reference code) mixes the factors per user;
``mixing="outputs"`` (the paper's text) mixes the outputs, ``sum_k w_k B_k (A_k x)``.

Conditioning: ``sequence_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lorarec.adapters.conditioning import expand_batch
from lorarec.adapters.tuner import (
    AdapterConfig,
    AdapterLayer,
    AdapterLinear,
    AdapterTuner,
    extend_peft_type,
    register_method,
)

extend_peft_type("RECLORA")


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

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.net(u.to(self.net[1].weight.dtype)).float()
        return torch.softmax(z / self.temperature, dim=-1)


@dataclass
class RecLoraConfig(AdapterConfig):
    banks: int = field(default=8, metadata={"help": "number of meta-LoRAs K"})
    temperature: float = field(default=1.0)
    mixing: str = field(default="weights", metadata={"help": "weights or outputs"})
    router_in: int = field(default=64, metadata={"help": "width of the sequence state"})
    router_hidden: int = field(default=60)
    router_dropout: float = field(default=0.1)
    method: str = "reclora"

    def __post_init__(self):
        super().__post_init__()
        if self.banks < 1:
            raise ValueError(f"reclora: banks must be at least 1, got {self.banks}")
        if self.mixing not in ("weights", "outputs"):
            raise ValueError(f"reclora: mixing must be weights or outputs, got {self.mixing!r}")


class RecLoraLayer(AdapterLayer):
    prefix = "reclora_"
    adapter_layer_names = ("reclora_bank", "reclora_router")

    def bank_shape(self, config) -> tuple[int, int]:
        return config.banks, config.r

    def add_parts(self, adapter_name: str, config) -> None:
        if not hasattr(self, "reclora_router"):
            self.reclora_router = nn.ModuleDict({})
        self.reclora_router[adapter_name] = Router(
            config.router_in,
            config.banks,
            config.router_hidden,
            config.router_dropout,
            config.temperature,
        )


class RecLoraLinear(AdapterLinear, RecLoraLayer):
    def delta(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        w = self.reclora_router[name](state["sequence_state"])  # (batch, K)
        return self.low_rank(name, x, weights=w, mixing=self.settings[name].mixing)


class RecLoraModel(AdapterTuner):
    prefix = "reclora_"
    tuner_layer_cls = RecLoraLayer
    layer_cls = RecLoraLinear

    def _derive(self, name: str, cond, forward: dict) -> dict:
        cond.require("reclora", "sequence_state")
        u = cond.sequence_state
        if forward:
            u = expand_batch(u, forward["batch"], "sequence_state")
        return {"sequence_state": u}


register_method("reclora", RecLoraConfig, RecLoraModel)
