"""The MFU numerator: ``StepFlops`` against the matmul FLOPs torch itself counts in a LoRA
training step (forward and backward), with logits everywhere and only at the last positions,
with a separate and a tied vocabulary projection."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from lorarec.trainer.recipe import StepFlops
from tests.conftest import tiny_llama

BATCH, TOKENS, VOCAB = 3, 12, 211


def counted_weight_flops(model, keep: int | None) -> int:
    """The FLOPs of the weight matmuls of one forward and backward, as torch's FlopCounterMode
    counts them: every op but attention's (the model uses scaled dot-product attention, whose
    ops are left out; the weight matmuls are mm, or bmm for the sliced last positions). The input embeddings require a
    gradient so that the first layer's backward runs in full, as every deeper layer's does."""
    ids = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    kw = {} if keep is None else {"logits_to_keep": keep}
    with FlopCounterMode(display=False) as counter:
        model(inputs_embeds=embeds, **kw).logits.float().square().mean().backward()
    ops = counter.get_flop_counts()["Global"]
    return sum(n for op, n in ops.items() if "scaled_dot_product" not in str(op))


@pytest.mark.parametrize("tied", [False, True], ids=["separate head", "tied head"])
@pytest.mark.parametrize("keep", [None, 2], ids=["all logits", "last 2 logits"])
def test_step_flops_equal_the_counted_weight_matmuls(tied, keep):
    backbone = tiny_llama(vocab_size=VOCAB, tie_word_embeddings=tied, attn_implementation="sdpa")
    model = get_peft_model(
        backbone, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    flops = StepFlops.of(model)
    assert flops.head == VOCAB * 32 and not flops.head_trainable
    assert flops.body_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = BATCH * (TOKENS if keep is None else keep)
    assert flops(BATCH * TOKENS, rows) == counted_weight_flops(model, keep)
