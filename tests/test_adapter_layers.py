"""The adapter layers' math, in fp32 on random inputs (METHODS.md; issue acceptance: equivalences)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorarec.adapters.core import LowRankBank
from lorarec.adapters.graphlora.layer import GraphLoraLinear, scatter_node_states
from lorarec.adapters.ilora.layer import ILoraLinear
from lorarec.adapters.reclora.layer import RecLoraLinear

D_IN, D_OUT, BATCH, TOKENS = 24, 20, 4, 7
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def base():
    torch.manual_seed(0)
    return nn.Linear(D_IN, D_OUT)


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(BATCH, TOKENS, D_IN)


def randomise(bank: LowRankBank) -> None:
    with torch.no_grad():
        bank.A.normal_()
        bank.B.normal_()


def plain_lora(base, x, A, B, scaling):
    return base(x) + scaling * (x @ A.T) @ B.T


def peft_lora(base, A, B, rank, alpha):
    """PEFT's own LoRA on a copy of ``base`` with the given factors."""
    from peft import LoraConfig, get_peft_model

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(D_IN, D_OUT)

        def forward(self, x):
            return self.proj(x)

    model = Wrap()
    model.proj.load_state_dict(base.state_dict())
    peft = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    )
    layer = peft.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    return peft


def test_zero_B_returns_the_backbone(base, x):
    users = torch.randn(BATCH, 16)
    gate = torch.softmax(torch.randn(BATCH, 4), -1)
    shift = torch.randn(BATCH, TOKENS, 8)
    layers = [
        (ILoraLinear(base, 8, 4, 16.0), gate),
        (RecLoraLinear(base, 8, 4, 16.0, router_in=16), users),
        (RecLoraLinear(base, 8, 4, 16.0, router_in=16, mixing="outputs"), users),
        (GraphLoraLinear(base, 8, 16.0), shift),
    ]
    for layer, cond in layers:
        torch.testing.assert_close(layer(x, cond), base(x), **TOL)


def test_ilora_with_one_expert_is_lora_and_peft_lora(base, x):
    layer = ILoraLinear(base, rank=8, experts=1, alpha=16.0)
    randomise(layer.bank)
    gate = torch.ones(BATCH, 1)
    expected = plain_lora(base, x, layer.bank.A[0], layer.bank.B[0], 16.0 / 8)
    torch.testing.assert_close(layer(x, gate), expected, **TOL)
    peft = peft_lora(base, layer.bank.A[0], layer.bank.B[0], 8, 16.0)
    torch.testing.assert_close(layer(x, gate), peft(x), **TOL)


@pytest.mark.parametrize("mixing", ["weights", "outputs"])
def test_reclora_with_one_bank_is_lora(base, x, mixing):
    layer = RecLoraLinear(base, rank=8, banks=1, alpha=16.0, router_in=16, mixing=mixing)
    randomise(layer.bank)
    users = torch.randn(BATCH, 16)
    expected = plain_lora(base, x, layer.bank.A[0], layer.bank.B[0], 16.0 / 8)
    torch.testing.assert_close(layer(x, users), expected, **TOL)


def test_graphlora_with_b_zero_is_lora(base, x):
    layer = GraphLoraLinear(base, rank=8, alpha=16.0, b=0.0)
    randomise(layer.bank)
    shift = torch.randn(BATCH, TOKENS, 8)
    expected = plain_lora(base, x, layer.bank.A[0], layer.bank.B[0], 16.0 / 8)
    torch.testing.assert_close(layer(x, shift), expected, **TOL)
    # with b != 0 the node state moves exactly the tokens that stand for a node
    layer.b = 0.1
    index = torch.full((BATCH, TOKENS), -1)
    index[:, 2] = torch.arange(BATCH)
    states = torch.randn(BATCH, 8)
    out = layer(x, scatter_node_states(index, states))
    moved = (out - expected).abs().amax(-1)
    assert (moved[:, 2] > 1e-4).all() and (moved[:, [0, 1, 3, 4, 5, 6]] < 1e-6).all()
    node = 16.0 / 8 * 0.1 * states @ layer.bank.B[0].T
    torch.testing.assert_close(out[:, 2] - expected[:, 2], node, **TOL)


@pytest.mark.parametrize("banks,rank", [(1, 8), (4, 2), (8, 4)])
def test_batched_banks_equal_a_loop_over_banks(x, banks, rank):
    bank = LowRankBank(D_IN, D_OUT, rank, banks)
    randomise(bank)
    weights = torch.softmax(torch.randn(BATCH, banks), -1)
    torch.testing.assert_close(bank.mixed(x, weights), bank.mixed_reference(x, weights), **TOL)


def test_reclora_weight_mixing_mixes_the_factors(base, x):
    layer = RecLoraLinear(base, rank=4, banks=3, alpha=8.0, router_in=16)
    randomise(layer.bank)
    layer.eval()
    users = torch.randn(BATCH, 16)
    w = layer.router(users)
    out = layer(x, users)
    for i in range(BATCH):
        A_u = sum(w[i, k] * layer.bank.A[k] for k in range(3))
        B_u = sum(w[i, k] * layer.bank.B[k] for k in range(3))
        torch.testing.assert_close(out[i], plain_lora(base, x[i], A_u, B_u, 2.0), **TOL)


def test_a_sample_does_not_depend_on_the_rest_of_its_batch(base, x):
    torch.manual_seed(3)
    users = torch.randn(BATCH, 16)
    gate = torch.softmax(torch.randn(BATCH, 4), -1)
    shift = torch.randn(BATCH, TOKENS, 8)
    for layer, cond in [
        (ILoraLinear(base, 8, 4, 16.0), gate),
        (RecLoraLinear(base, 8, 4, 16.0, router_in=16), users),
        (GraphLoraLinear(base, 8, 16.0), shift),
    ]:
        randomise(layer.bank)
        layer.eval()
        full = layer(x, cond)
        for i in range(BATCH):
            torch.testing.assert_close(layer(x[i : i + 1], cond[i : i + 1]), full[i : i + 1], **TOL)


def test_ilora_reference_scale_is_experts_times_lora_scale(base):
    assert (
        ILoraLinear(base, 8, 4, 16.0, scale="reference").scaling
        == 4 * ILoraLinear(base, 8, 4, 16.0).scaling
    )
    with pytest.raises(ValueError, match="divisible"):
        ILoraLinear(base, 8, 3, 16.0)
