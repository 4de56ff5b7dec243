"""The adapters as PEFT methods, in fp32 on random inputs (the README's Adapters section:
equivalences, gradients, save and reload)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lorarec.adapters import CONFIGS, Conditioning, GraphBatch, bind_conditioning
from lorarec.adapters.core import LowRankBank

TOL = dict(atol=1e-5, rtol=1e-5)
BATCH, TOKENS, NODES, ITEMS, C = 3, 11, 24, 12, 16
TARGETS = ["q_proj", "v_proj"]


def make_conditioning(seed: int = 2) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    node_index = torch.full((BATCH, TOKENS), -1)
    node_index[:, 1] = torch.arange(BATCH)  # the user placeholder
    node_index[:, 4] = torch.tensor([3, 4, 5])  # item placeholders
    node_index[:, 7] = torch.tensor([6, 3, 7])
    src = torch.randint(0, 10, (30,), generator=g)
    dst = torch.randint(0, 10, (30,), generator=g)
    edges = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    item_index = torch.where(node_index >= 3, node_index - 3, -1)
    return Conditioning(
        graph=GraphBatch(
            torch.randperm(NODES, generator=g)[:10], edges, torch.rand(60, generator=g)
        ),
        node_index=node_index,
        user_node=torch.arange(BATCH),
        sequence_state=torch.randn(BATCH, C, generator=g),
        item_index=item_index,
        item_table=torch.randn(ITEMS, C, generator=g),
    )


def config(name: str, **kw):
    base = dict(r=8, lora_alpha=16.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    if name in ("graphlora", "graphmoe"):
        base.update(num_nodes=NODES, node_dim=8)
    if name in ("ilora", "graphmoe"):
        base.update(experts=4)
    if name == "ilora":
        base.update(gate_in=C)
    if name == "reclora":
        base.update(banks=4, router_in=C)
    base.update(kw)
    return CONFIGS[name](**base)


def adapt(backbone, cfg, seed: int = 0):
    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(backbone), cfg).eval()


def logits(model, ids, cond):
    with torch.no_grad():
        return model(input_ids=ids, conditioning=cond).logits


def banks_of(model) -> list[LowRankBank]:
    return [m for m in model.modules() if isinstance(m, LowRankBank)]


VARIANTS = [
    ("graphlora", {}),
    ("graphlora", {"gnn": "gcn", "a": 0.5}),
    ("graphlora", {"gnn": "ngcf", "graph_layers": [1]}),
    ("reclora", {}),
    ("reclora", {"mixing": "outputs"}),
    ("ilora", {}),
    ("ilora", {"scale": "reference"}),
    ("graphmoe", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_zero_B_returns_the_backbone(backbone, ids, name, kw):
    model = adapt(backbone, config(name, **kw))
    with torch.no_grad():
        expected = backbone(input_ids=ids).logits
    torch.testing.assert_close(logits(model, ids, make_conditioning()), expected, **TOL)


def lora_twin(backbone, model, rank: int, alpha: float):
    """PEFT's own LoRA with the factors of ``model``'s single bank per layer."""
    twin = adapt(backbone, LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS))
    ours = {n.rsplit(".", 2)[0]: m for n, m in model.named_modules() if isinstance(m, LowRankBank)}
    for name, module in twin.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict):
            bank = ours[name]
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(bank.A[0])
                module.lora_B["default"].weight.copy_(bank.B[0])
    return twin


@pytest.mark.parametrize(
    "name,kw",
    [
        ("ilora", {"experts": 1}),
        ("graphmoe", {"experts": 1}),
        ("reclora", {"banks": 1}),
        ("reclora", {"banks": 1, "mixing": "outputs"}),
        ("graphlora", {"b": 0.0}),
    ],
)
def test_degenerate_cases_equal_plain_lora_and_peft_lora(backbone, ids, name, kw):
    model = adapt(backbone, config(name, init_weights=False, **kw))
    twin = lora_twin(backbone, model, 8, 16.0)
    with torch.no_grad():
        expected = twin(input_ids=ids).logits
    got = logits(model, ids, make_conditioning())
    torch.testing.assert_close(got, expected, **TOL)
    with torch.no_grad():  # and the adapter is not the backbone: the comparison could fail
        assert (backbone(input_ids=ids).logits - expected).abs().max() > 1e-4


def test_graph_state_moves_only_the_tokens_that_stand_for_a_node(backbone):
    """At the first adapted projection, GraphLoRA = LoRA + s * b * B g(node) at node tokens."""
    model = adapt(backbone, config("graphlora", init_weights=False, b=0.5))
    cond = make_conditioning()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(BATCH, TOKENS, 32)
    with torch.no_grad(), bind_conditioning(model, cond):
        ctx = model.base_model.conditioning_context
        ctx.begin_forward(BATCH, TOKENS, False)
        out = layer(x)
        states = model.base_model.graphlora_gnn["default"](
            cond.graph.nodes, cond.graph.edge_index, cond.graph.edge_weight
        )
        ctx.end_forward()
        bank = layer.graphlora_bank["default"]
        lora = layer.base_layer(x) + 2.0 * (x @ bank.A[0].T) @ bank.B[0].T
    moved = (out - lora).abs().amax(-1)
    node = cond.node_index >= 0
    assert (moved[node] > 1e-6).all() and (moved[~node] < 1e-6).all()
    expected = 2.0 * 0.5 * states[cond.node_index[node]] @ bank.B[0].T
    torch.testing.assert_close((out - lora)[node], expected, **TOL)


@pytest.mark.parametrize("banks,rank", [(1, 8), (4, 2), (8, 4)])
@pytest.mark.parametrize("mixing", ["outputs", "weights"])
def test_batched_banks_equal_a_loop(banks, rank, mixing):
    torch.manual_seed(0)
    bank = LowRankBank(24, 20, rank, banks, zero_B=False)
    x = torch.randn(BATCH, 7, 24)
    w = torch.softmax(torch.randn(BATCH, banks), -1)
    shift = torch.randn(BATCH, 7, banks * rank) if mixing == "outputs" else None
    torch.testing.assert_close(
        bank(x, weights=w, shift=shift, mixing=mixing),
        bank.reference(x, weights=w, shift=shift, mixing=mixing),
        **TOL,
    )


def sample_rows(cond: Conditioning, i: int) -> Conditioning:
    """Sample ``i``'s conditioning; the subgraph stays the batch's (states depend on it)."""
    pick = slice(i, i + 1)
    return Conditioning(
        graph=cond.graph,
        node_index=cond.node_index[pick],
        user_node=cond.user_node[pick],
        sequence_state=cond.sequence_state[pick],
        item_index=cond.item_index[pick],
        item_table=cond.item_table,
    )


@pytest.mark.parametrize("name,kw", VARIANTS + [("ilora", {"hybrid_prompt": True})])
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(backbone, ids, name, kw):
    model = adapt(backbone, config(name, init_weights=False, **kw))
    cond = make_conditioning()
    full = logits(model, ids, cond)
    for i in range(BATCH):
        torch.testing.assert_close(
            logits(model, ids[i : i + 1], sample_rows(cond, i)), full[i : i + 1], **TOL
        )


CHECKPOINTED = [
    ("graphlora", {}),
    ("reclora", {"mixing": "weights"}),
    ("ilora", {"hybrid_prompt": True}),
    ("graphmoe", {}),
    ("collab", {"node_dim": C}),
]


def checkpointed_grads(backbone, ids, name, kw, ckpt: bool, interleaved: bool):
    """The adapter's gradients of two micro-batches (different inputs and conditioning)
    accumulated; ``interleaved``: both forwards run before either backward."""
    from lorarec.adapters import enable_gradient_checkpointing

    model = adapt(backbone, config(name, init_weights=False, **kw)).train()
    if ckpt:
        enable_gradient_checkpointing(model)
    count = [0]
    layer = model.base_model.model.model.layers[0].mlp
    # a pre-hook: the recomputation stops once it has what the backward needs, before the
    # module returns, so a forward hook would not see it
    layer.register_forward_pre_hook(lambda *a, count=count: count.__setitem__(0, count[0] + 1))
    batches = [(ids, make_conditioning(2)), (ids.flip(0), make_conditioning(5))]
    if interleaved:
        losses = [model(input_ids=x, labels=x, conditioning=c).loss for x, c in batches]
        for loss in reversed(losses):  # the first forward's backward runs last
            loss.backward()
    else:
        for x, c in batches:
            model(input_ids=x, labels=x, conditioning=c).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads, count[0]


@pytest.mark.parametrize("name,kw", CHECKPOINTED)
@pytest.mark.parametrize("interleaved", [False, True], ids=["in-turn", "interleaved"])
def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(
    backbone, ids, name, kw, interleaved
):
    """``train.gradient_checkpointing``: each recomputed layer reads the conditioning state of
    the forward it belongs to, also when another forward ran since (micro-batches whose
    forwards run before their backwards), so every gradient equals the one without."""
    plain, plain_calls = checkpointed_grads(backbone, ids, name, kw, False, interleaved)
    ckpt, ckpt_calls = checkpointed_grads(backbone, ids, name, kw, True, interleaved)
    assert (plain_calls, ckpt_calls) == (2, 4)  # the checkpointed layer ran again in backward
    assert plain.keys() == ckpt.keys()
    for n, g in plain.items():
        assert g is not None and g.abs().sum() > 0, n
        torch.testing.assert_close(ckpt[n], g, **TOL)


def test_a_recomputation_whose_forward_state_is_gone_is_an_error(backbone, ids):
    from lorarec.adapters import enable_gradient_checkpointing
    from lorarec.adapters.conditioning import find_context

    model = adapt(backbone, config("graphlora", init_weights=False)).train()
    enable_gradient_checkpointing(model)
    ctx = find_context(model)
    first = model(input_ids=ids, labels=ids, conditioning=make_conditioning()).loss
    for _ in range(ctx.KEEP):
        model(input_ids=ids, labels=ids, conditioning=make_conditioning(3))
    with pytest.raises(RuntimeError, match="whose conditioning state is gone"):
        first.backward()


def test_checkpointing_enabled_without_the_adapters_context_is_an_error(backbone, ids):
    """Checkpointing switched on the plain way cannot tell a recomputed layer its forward:
    an error, not the state of whichever forward ran last."""
    model = adapt(backbone, config("graphlora", init_weights=False)).train()
    model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
    loss = model(input_ids=ids, labels=ids, conditioning=make_conditioning()).loss
    with pytest.raises(RuntimeError, match="enable_gradient_checkpointing"):
        loss.backward()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("graphlora", {}),
        ("graphlora", {"gnn": "ngcf"}),
        ("reclora", {}),
        ("ilora", {"hybrid_prompt": True}),
        ("graphmoe", {}),
    ],
)
def test_gradients_reach_every_trainable_part(backbone, ids, name, kw):
    model = adapt(backbone, config(name, **kw))
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    parts = {n.split(".default")[0].rsplit(".", 1)[-1] for n in trainable}
    expected = {
        "graphlora": {"graphlora_bank", "graphlora_gnn"},
        "reclora": {"reclora_bank", "reclora_router"},
        "ilora": {"ilora_bank", "ilora_gate", "ilora_projector"},
        "graphmoe": {"graphmoe_bank", "graphmoe_gate", "graphmoe_gnn"},
    }[name]
    assert parts == expected
    assert not any(
        p.requires_grad
        for n, p in model.named_parameters()
        if "base_layer" in n or "embed_tokens" in n
    )
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    cond = make_conditioning()
    for _ in range(2):  # B starts at zero: A, gates and graph get gradient from the second step
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids, conditioning=cond).loss
        loss.backward()
        opt.step()
    silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"


@pytest.mark.parametrize(
    "name,kw", VARIANTS + [("ilora", {"hybrid_prompt": True})], ids=IDS + ["ilora-hybrid"]
)
def test_save_and_reload_through_peft(backbone, ids, tmp_path, name, kw):
    model = adapt(backbone, config(name, init_weights=False, **kw))
    cond = make_conditioning()
    expected = logits(model, ids, cond)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == name.upper()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(backbone), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, ids, cond), expected, **TOL)
    # and the adapter is not the backbone: the comparison could fail
    with torch.no_grad():
        assert (backbone(input_ids=ids).logits - expected).abs().max() > 1e-4


def test_conditioning_is_explicit_and_checked(backbone, ids):
    model = adapt(backbone, config("graphlora"))
    with pytest.raises(RuntimeError, match="no conditioning bound"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="lacks graph"):
        model(input_ids=ids, conditioning=Conditioning(node_index=make_conditioning().node_index))
    with pytest.raises(ValueError, match="covers 11 tokens, the input has 5"):
        model(input_ids=ids[:, :5], conditioning=make_conditioning())
    # a binding is per model: another model in the same process is not affected
    other = adapt(backbone, config("graphlora"))
    with bind_conditioning(model, make_conditioning()):
        model(input_ids=ids)
        with pytest.raises(RuntimeError, match="no conditioning bound"):
            other(input_ids=ids)


def test_generate_with_bound_conditioning_and_beams(backbone, ids):
    from lorarec.adapters import enable_conditioning_kwarg

    model = adapt(backbone, config("ilora", init_weights=False))
    enable_conditioning_kwarg(model)
    cond = make_conditioning()
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    a = model.generate(input_ids=ids, conditioning=cond, **kw)
    with bind_conditioning(model, cond):
        b = model.generate(input_ids=ids, **kw)
        c = model.generate(input_ids=ids, num_beams=2, **kw)
    assert torch.equal(a, b) and c.shape == a.shape


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_reference_loops_equal_the_batched_adapter(backbone, ids, name, kw):
    """The straightforward per-expert / per-sample code the benchmark compares against
    computes the same outputs."""
    model = adapt(backbone, config(name, init_weights=False, **kw))
    cond = make_conditioning()
    batched = logits(model, ids, cond)
    for m in model.modules():
        if hasattr(m, "reference_per_sample"):
            m.reference = True
    torch.testing.assert_close(logits(model, ids, cond), batched, **TOL)


@pytest.mark.parametrize(
    "name,kw", [("graphlora", {}), ("ilora", {"hybrid_prompt": True}), ("reclora", {})]
)
def test_candidate_scoring_with_a_shared_prompt_cache_matches_rerunning_the_prompt(
    backbone, ids, name, kw
):
    """Evaluation scores 20 candidates on one prompt KV cache; with conditioning (placeholder
    tokens in the prompt, per-sample states repeated for the candidates) it must equal
    re-running prompt + candidate, where the candidate's tokens stand for no node."""
    from lorarec.evaluation.scoring import (
        candidate_log_likelihoods,
        candidate_log_likelihoods_reference,
    )

    model = adapt(backbone, config(name, init_weights=False, **kw))
    full = make_conditioning()
    one = sample_rows(full, 0)
    prompt = ids[0].tolist()
    candidates = [[5, 6, 7], [8], [9, 10]]

    def extended(n: int) -> Conditioning:
        pad = torch.full((1, n), -1)
        return Conditioning(
            graph=one.graph,
            node_index=torch.cat([one.node_index, pad], 1),
            user_node=one.user_node,
            sequence_state=one.sequence_state,
            item_index=torch.cat([one.item_index, pad], 1),
            item_table=one.item_table,
        )

    cached = candidate_log_likelihoods(model, prompt, candidates, one)
    rerun = candidate_log_likelihoods_reference(model, prompt, candidates, extended)
    np.testing.assert_allclose(cached, rerun, atol=1e-4)
