"""iLoRA (the README's Adapters table): a mixture of LoRA experts gated by the user's sequence.

    g = softmax( gate(u) )                                   u: frozen SASRec state, (batch, c)
    h = W x + s * sum_i g_i B_i (A_i dropout(x))

``E`` experts of rank ``r / E`` each (total rank ``r``), run batched: one matmul for every
expert's ``A``, one for every ``B`` (:class:`~lorarec.adapters.core.LowRankBank`). One gate
vector per sequence, shared by all layers and tokens. ``s = alpha / r`` (plain LoRA's scale at
the same total rank); ``scale="reference"`` uses the reference code's ``alpha / (r / E)``.

Hybrid prompt (LLaRA, ``hybrid_prompt=True``): the input embedding of every item placeholder
token is replaced by ``projector(SASRec item embedding)``.

Conditioning: ``sequence_state`` (+ ``item_index``, ``item_table`` with the hybrid prompt).
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

extend_peft_type("ILORA")


class Gate(nn.Module):
    """Conditioning vector -> expert weights: ``softmax(Linear(ReLU(Linear(u))))``."""

    def __init__(self, in_features: int, experts: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, experts)
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(u.to(self.net[0].weight.dtype)).float(), dim=-1)


class Projector(nn.Module):
    """SASRec item embedding -> the backbone's input embedding space (LLaRA's hybrid prompt)."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e.to(self.net[0].weight.dtype))


def placeholder_embeddings(projector: nn.Module, cond, forward: dict, method: str):
    """``(embeddings, mask)``: ``projector(item_table[node])`` at every placeholder token of
    ``cond.item_index`` (``-1`` elsewhere), dense over the forward's (batch, tokens)."""
    index = expand_batch(cond.item_index, forward["batch"], "item_index")
    if index.shape[1] != forward["tokens"]:
        raise ValueError(
            f"{method}: item_index covers {index.shape[1]} tokens, the input has "
            f"{forward['tokens']}"
        )
    mask = index >= 0
    projected = projector(cond.item_table[index[mask]])
    dense = projected.new_zeros(*index.shape, projected.shape[-1])
    dense[mask] = projected
    return dense, mask


@dataclass
class ILoraConfig(AdapterConfig):
    experts: int = field(default=4, metadata={"help": "number of experts E (rank r / E each)"})
    gate_in: int = field(default=64, metadata={"help": "width of the sequence state"})
    gate_hidden: int = field(default=64)
    scale: str = field(default="lora", metadata={"help": "lora: alpha/r; reference: alpha/(r/E)"})
    hybrid_prompt: bool = field(default=False)
    hidden_size: int = field(default=0, metadata={"help": "backbone width (hybrid prompt)"})
    method: str = "ilora"

    def __post_init__(self):
        super().__post_init__()
        if self.experts < 1 or self.r % self.experts:
            raise ValueError(f"ilora: r={self.r} must be a multiple of experts={self.experts}")
        if self.scale not in ("lora", "reference"):
            raise ValueError(f"ilora: scale must be lora or reference, got {self.scale!r}")


class ILoraLayer(AdapterLayer):
    prefix = "ilora_"
    adapter_layer_names = ("ilora_bank",)

    def bank_shape(self, config) -> tuple[int, int]:
        return config.experts, config.r // config.experts

    def scale(self, config) -> float:
        if config.scale == "reference":
            return config.lora_alpha / (config.r // config.experts)
        return config.lora_alpha / config.r


class ILoraLinear(AdapterLinear, ILoraLayer):
    def delta(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        return self.low_rank(name, x, weights=state["gate"])  # sum_i g_i B_i (A_i x)


class ILoraModel(AdapterTuner):
    prefix = "ilora_"
    tuner_layer_cls = ILoraLayer
    layer_cls = ILoraLinear
    shared_names = ("gate", "projector")

    def make_shared(self, what: str, config) -> nn.Module:
        if what == "gate":
            return Gate(config.gate_in, config.experts, config.gate_hidden)
        if not config.hybrid_prompt:
            return nn.Identity()
        hidden = config.hidden_size or self.model.get_input_embeddings().embedding_dim
        return Projector(config.gate_in, hidden)

    def replaces_embeddings(self, name: str) -> bool:
        return self.peft_config[name].hybrid_prompt

    def _derive(self, name: str, cond, forward: dict) -> dict:
        cond.require("ilora", "sequence_state")
        u = cond.sequence_state
        if forward:
            u = expand_batch(u, forward["batch"], "sequence_state")
        out = {"gate": self.shared("gate")[name](u)}
        if self.peft_config[name].hybrid_prompt and forward and not forward["incremental"]:
            cond.require("ilora (hybrid prompt)", "item_index", "item_table")
            out["token_embeddings"], out["token_mask"] = placeholder_embeddings(
                self.shared("projector")[name], cond, forward, "ilora"
            )
        return out


register_method("ilora", ILoraConfig, ILoraModel)
