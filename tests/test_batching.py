"""The training loss computes logits only where the answer tokens need them, with the same loss
and gradients as over the whole sequence."""

from __future__ import annotations

import torch

from lorarec.core.config import ModelConfig
from lorarec.trainer.backbone import byte_level_tokenizer, load_backbone
from lorarec.trainer.batching import (
    IGNORE,
    ExampleBuilder,
    answer_logits_to_keep,
    answer_token_loss_sum,
    collate,
)


def test_answer_logits_only_give_the_full_loss_and_gradients():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = load_backbone(ModelConfig(backbone="tiny-random"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # B away from zero, so gradients reach A too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    tok = byte_level_tokenizer()
    titles = [f"Movie {i}" for i in range(40)]
    builder = ExampleBuilder(tok, titles, "next_item", 10, 1 << 30)
    samples = [
        {"key": str(i), "user": -1, "history": list(range(i, i + 2 + i % 5)), "target": 30 + i}
        for i in range(4)
    ]
    for s in samples:
        s["candidates"] = [s["target"], *range(20, 29)]
    batch = collate([builder.build(s) for s in samples], tok.pad_token_id)
    keep = answer_logits_to_keep(batch["labels"])
    width = batch["labels"].shape[1]
    assert 1 < keep < width  # the prompts are skipped (the shortest answer starts late)

    def loss_and_grads(**kw):
        model.zero_grad()
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw
        ).logits
        loss = answer_token_loss_sum(logits, batch["labels"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.shape[1], loss.detach(), grads

    n_full, full, g_full = loss_and_grads()
    n_kept, kept, g_kept = loss_and_grads(logits_to_keep=keep)
    assert (n_full, n_kept) == (width, keep)
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
    for name in g_full:
        torch.testing.assert_close(g_kept[name], g_full[name], rtol=1e-5, atol=1e-7)
    # one position fewer would drop the first answer token's prediction: the loss changes
    _, short, _ = loss_and_grads(logits_to_keep=keep - 1)
    assert abs(float(short) - float(full)) > 1e-3


def test_a_batch_without_answers_keeps_one_position():
    labels = torch.full((2, 7), IGNORE)
    assert answer_logits_to_keep(labels) == 1
