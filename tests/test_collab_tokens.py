"""Plain LoRA with collaborative embeddings as input tokens (``train.lora.collab_tokens``, CoLLM's
design; the ``collab`` PEFT method): the placeholder tokens' input embeddings, the low-rank
update, what moves the output, where gradients go, save and reload, and the conditioning the
trainer builds for it (fp32, tiny random Llama)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lorarec.adapters import CollabConfig, Conditioning
from lorarec.core.config import load_config
from lorarec.core.errors import ConfigError
from lorarec.data.prepared import PreparedData
from tests.test_adapter_layers import BATCH, TARGETS, TOKENS, TOL, adapt, logits, lora_twin

NODES, NODE_DIM = 20, 8


def collab_config(**kw) -> CollabConfig:
    base = dict(r=8, lora_alpha=16.0, target_modules=TARGETS, node_dim=NODE_DIM)
    return CollabConfig(task_type="CAUSAL_LM", **{**base, **kw})


def make_conditioning(seed: int = 3) -> Conditioning:
    """A user placeholder at token 1 and item placeholders at 4 and 7 (global node ids)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.full((BATCH, TOKENS), -1)
    index[:, 1] = torch.tensor([0, 1, 2])
    index[:, 4] = torch.tensor([10, 11, 12])
    index[:, 7] = torch.tensor([13, 10, 19])
    return Conditioning(item_index=index, item_table=torch.randn(NODES, NODE_DIM, generator=g))


def projected(model, cond: Conditioning) -> torch.Tensor:
    """What the placeholder tokens should embed: projector(table[node]) at every token."""
    proj = model.base_model.collab_projector["default"]
    with torch.no_grad():
        return proj(cond.item_table[cond.item_index.clamp(min=0)])


def first_layer_input(model, ids, cond) -> torch.Tensor:
    """The hidden states the first decoder layer receives (the input embeddings it runs on)."""
    seen = []

    def grab(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    layer = model.base_model.model.model.layers[0]
    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        logits(model, ids, cond)
    finally:
        handle.remove()
    return seen[0]


def expected_embeddings(backbone, model, ids, cond) -> torch.Tensor:
    with torch.no_grad():
        tokens = backbone.get_input_embeddings()(ids)
    mask = (cond.item_index >= 0).unsqueeze(-1)
    return torch.where(mask, projected(model, cond), tokens)


def test_placeholder_tokens_embed_the_projected_table_and_the_rest_the_backbones(backbone, ids):
    model = adapt(backbone, collab_config())
    cond = make_conditioning()
    got = first_layer_input(model, ids, cond)
    want = expected_embeddings(backbone, model, ids, cond)
    node = cond.item_index >= 0
    assert torch.equal(got[~node], want[~node])  # every other token: the backbone's embedding
    torch.testing.assert_close(got[node], want[node], **TOL)
    # the projection is not the token embedding: the comparison could fail
    with torch.no_grad():
        tokens = backbone.get_input_embeddings()(ids)
    assert (got[node] - tokens[node]).abs().amax(-1).min() > 1e-3
    # at the start (B = 0) the model is the backbone run on those input embeddings
    with torch.no_grad():
        base = backbone(inputs_embeds=want).logits
    torch.testing.assert_close(logits(model, ids, cond), base, **TOL)


def test_the_low_rank_update_is_peft_loras(backbone, ids):
    """With PEFT LoRA's factors copied in: no placeholder -> PEFT LoRA's logits on the same ids;
    placeholders -> PEFT LoRA's logits on the same input embeddings."""
    model = adapt(backbone, collab_config(init_weights=False))
    twin = lora_twin(backbone, model, 8, 16.0)
    cond = make_conditioning()
    none = Conditioning(item_index=torch.full_like(cond.item_index, -1), item_table=cond.item_table)
    with torch.no_grad():
        plain = twin(input_ids=ids).logits
        on_embeddings = twin(inputs_embeds=expected_embeddings(backbone, model, ids, cond)).logits
        assert (backbone(input_ids=ids).logits - plain).abs().max() > 1e-4  # B != 0
    torch.testing.assert_close(logits(model, ids, none), plain, **TOL)
    torch.testing.assert_close(logits(model, ids, cond), on_embeddings, **TOL)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == 16.0 / 8 and layer.collab_bank["default"].banks == 1


def test_only_the_placeholders_nodes_move_the_output(backbone, ids):
    model = adapt(backbone, collab_config(init_weights=False))
    cond = make_conditioning()
    base = logits(model, ids, cond)

    def changed(other: Conditioning, other_ids=ids) -> torch.Tensor:
        return (logits(model, other_ids, other) - base).abs().amax(-1)  # (batch, tokens)

    # another node at row 0's item placeholder (token 4): row 0 moves from token 4 on
    index = cond.item_index.clone()
    index[0, 4] = 15
    moved = changed(Conditioning(item_index=index, item_table=cond.item_table))
    assert (moved[0, 4:] > 1e-4).all() and (moved[0, :4] == 0).all() and (moved[1:] == 0).all()
    # another user node for row 2 (token 1)
    index = cond.item_index.clone()
    index[2, 1] = 5
    moved = changed(Conditioning(item_index=index, item_table=cond.item_table))
    assert (moved[2, 1:] > 1e-4).all() and (moved[2, :1] == 0).all() and (moved[:2] == 0).all()
    # table rows of nodes no placeholder stands for, and the token ids at placeholders: nothing
    table = cond.item_table.clone()
    table[[3, 4, 5, 14, 15, 16]] = torch.randn(6, NODE_DIM)
    assert (changed(Conditioning(item_index=cond.item_index, item_table=table)) == 0).all()
    other_ids = ids.clone()
    other_ids[cond.item_index >= 0] = (other_ids[cond.item_index >= 0] + 1) % 101
    assert (changed(cond, other_ids) == 0).all()
    # and a referenced node's row does move its tokens
    table = cond.item_table.clone()
    table[19] += 1.0
    moved = changed(Conditioning(item_index=cond.item_index, item_table=table))
    assert (moved[2, 7:] > 1e-4).all() and (moved[:2] == 0).all()


def test_gradients_reach_the_projector_and_the_factors_only(backbone, ids):
    model = adapt(backbone, collab_config()).train()
    cond = make_conditioning()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    parts = {n.split(".default")[0].rsplit(".", 1)[-1] for n in trainable}
    assert parts == {"collab_bank", "collab_projector"}
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == len(list(backbone.parameters()))  # the whole backbone, nothing else
    table = cond.item_table
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    for step in range(2):  # B starts at zero: A gets gradient from the second step
        opt.zero_grad()
        model(input_ids=ids, labels=ids, conditioning=cond).loss.backward()
        if step == 0:  # the projector does from the first (it moves the input embeddings)
            assert all(
                p.grad is not None and p.grad.abs().sum() > 0
                for n, p in trainable.items()
                if "projector" in n
            )
        opt.step()
    silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"
    assert table.grad is None and not table.requires_grad
    # nor did the forwards make the table (or a copy) part of the model
    assert not any(p.data_ptr() == table.data_ptr() for p in model.parameters())
    assert not any(t.shape == table.shape for t in model.state_dict().values())
    assert all(p.grad is None for p in frozen)


def test_save_and_reload_through_peft_without_the_table(backbone, ids, tmp_path):
    from peft import PeftModel

    model = adapt(backbone, collab_config(init_weights=False))
    cond = make_conditioning()
    expected = logits(model, ids, cond)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "COLLAB" and saved["node_dim"] == NODE_DIM
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert weights and all("collab_bank" in k or "collab_projector" in k for k in weights)
    assert any("collab_projector" in k for k in weights)
    assert not any(
        t.shape[0] == NODES or t.shape == cond.item_table.shape for t in weights.values()
    )
    reloaded = PeftModel.from_pretrained(copy.deepcopy(backbone), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, ids, cond), expected, atol=0, rtol=0)
    with torch.no_grad():  # and the adapter is not the backbone: the comparison could fail
        assert (backbone(input_ids=ids).logits - expected).abs().max() > 1e-4


# ------------------------------------------------------------------------- the run's wiring


def dense_lightgcn(emb: np.ndarray, indptr, indices, layers: int) -> torch.Tensor:
    """mean_k Â^k E0 with a dense Â = D^-1/2 A D^-1/2 (degrees at least 1)."""
    n = len(indptr) - 1
    a = np.zeros((n, n))
    for u in range(n):
        a[u, indices[indptr[u] : indptr[u + 1]]] += 1.0
    d = np.maximum(np.diff(indptr), 1).astype(np.float64)
    a = a / np.sqrt(d[:, None] * d[None, :])
    x, outs = emb.astype(np.float64), [emb.astype(np.float64)]
    for _ in range(layers):
        x = a @ x
        outs.append(x)
    return torch.as_tensor(np.mean(outs, 0), dtype=torch.float32)


@pytest.fixture(scope="module")
def data(ml100k_prepared):
    return PreparedData.open(ml100k_prepared, "next_item")


def collab_run(data, *overrides):
    from lorarec.trainer.backbone import byte_level_tokenizer
    from lorarec.trainer.batching import ExampleBuilder
    from lorarec.trainer.conditioning import ConditioningBuilder, placeholder_kinds

    cfg = load_config(
        "configs/tiny.yaml",
        ["train.lora.collab_tokens=true", f"data.dir={data.root}", *overrides],
    )
    assert placeholder_kinds(cfg) == {"user", "item"}
    emb = np.random.default_rng(0).normal(size=(data.num_users + data.num_items, 8))
    builder = ConditioningBuilder(cfg, data, None, collab=emb.astype(np.float32))
    ex = ExampleBuilder(
        byte_level_tokenizer(), data.titles, "next_item", 10, 4096, placeholder_kinds(cfg)
    )
    return cfg, emb, builder, ex


def check_node_ids(builder, ex, samples, num_users, left_pad):
    prompts = [ex.prompt(s) for s in samples]
    lengths = [len(p) for p, _ in prompts]
    width = max(lengths) + 3
    cond = builder.build(samples, [m for _, m in prompts], lengths, width, left_pad=left_pad)
    marker = ex.prompt(samples[0])[0][prompts[0][1][0][0]]  # the placeholder token
    for row, (s, (prompt, _)) in enumerate(zip(samples, prompts)):
        start = width - lengths[row] if left_pad else 0
        index = cond.item_index[row]
        expected = [s["user"]] if s["user"] >= 0 else []
        expected += [num_users + i for i in s["history"][-10:]]
        expected += [num_users + c for c in s["candidates"]]
        where = (index >= 0).nonzero().flatten()
        assert index[where].tolist() == expected
        padded = torch.full((width,), -1)
        padded[start : start + lengths[row]] = torch.tensor(prompt)
        assert (padded[where] == marker).all()  # each id sits on a placeholder token
        assert int((padded == marker).sum()) >= len(expected)
    return cond


@pytest.mark.parametrize("left_pad", [False, True])
def test_builder_maps_placeholders_to_global_node_ids(data, left_pad):
    cfg, emb, builder, ex = collab_run(data)
    samples = data.samples("valid")[:200:40]
    assert builder.active and data.num_users > 0 and all(s["user"] >= 0 for s in samples)
    cond = check_node_ids(builder, ex, samples, data.num_users, left_pad)
    indptr, indices = data.graph()
    want = dense_lightgcn(emb, np.asarray(indptr), np.asarray(indices), cfg.train.graph.layers)
    torch.testing.assert_close(cond.item_table, want, atol=1e-5, rtol=1e-5)
    assert not cond.item_table.requires_grad
    assert (cond.item_table - torch.as_tensor(emb, dtype=torch.float32)).abs().max() > 0.1


def test_builder_on_data_without_users(data):
    """Sequences format: no user placeholder, items are nodes ``0..I-1``; a 3-layer table."""
    ex = collab_run(data)[3]  # the prompts of a collab run
    rng = np.random.default_rng(1)
    n_items = data.num_items
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 4, n_items))])
    indices = rng.integers(0, n_items, int(indptr[-1]))
    items_only = SimpleNamespace(num_users=0, graph=lambda: (indptr, indices))
    cfg = load_config(
        "configs/tiny.yaml", ["train.lora.collab_tokens=true", "train.graph.layers=3"]
    )
    from lorarec.trainer.conditioning import ConditioningBuilder

    emb = np.random.default_rng(2).normal(size=(n_items, 8)).astype(np.float32)
    builder = ConditioningBuilder(cfg, items_only, None, collab=emb)
    samples = [{**s, "user": -1} for s in data.samples("valid")[:100:25]]
    for left_pad in (False, True):
        cond = check_node_ids(builder, ex, samples, 0, left_pad)
    torch.testing.assert_close(
        cond.item_table, dense_lightgcn(emb, indptr, indices, 3), atol=1e-5, rtol=1e-5
    )


def test_config_peft_config_and_reload_checks(tmp_path):
    from peft import LoraConfig

    from lorarec.evaluation.protocol import load_adapter
    from lorarec.trainer.adapter import peft_config

    with pytest.raises(ConfigError, match="collab_tokens is plain LoRA's option"):
        load_config(None, ["train.adapter=graphlora", "train.lora.collab_tokens=true"])
    with pytest.raises(ConfigError, match="train.graph.init must be lightgcn, mf or label_mf"):
        load_config(None, ["train.lora.collab_tokens=true", "train.graph.init=random"])
    collab = load_config(None, ["train.lora.collab_tokens=true", "train.graph.node_dim=16"])
    plain = load_config(None, [])
    small = SimpleNamespace(num_users=3, num_items=5)
    pc = peft_config(collab, small)
    assert isinstance(pc, CollabConfig) and pc.node_dim == 16 and pc.r == collab.train.lora.rank
    assert type(peft_config(plain, small)) is LoraConfig
    # an exported adapter reloads only under the config that trained it
    for kind, cfg in (("COLLAB", plain), ("LORA", collab)):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": kind}))
        with pytest.raises(ConfigError, match="the adapter is"):
            load_adapter(None, str(tmp_path), cfg, None)


def test_plan_counts_the_collab_adapter_and_its_table():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lorarec.launch import plan as P
    from lorarec.trainer.adapter import peft_config
    from lorarec.trainer.backbone import byte_level_tokenizer, tiny_config

    cfg = load_config("configs/tiny.yaml", ["train.lora.collab_tokens=true"])
    counts = P.count(cfg, "tiny-random", 300, 120)
    model = AutoModelForCausalLM.from_config(
        tiny_config(cfg.model.tiny, len(byte_level_tokenizer()))
    )
    peft = get_peft_model(model, peft_config(cfg, SimpleNamespace(num_users=0, num_items=300)))
    assert counts.adapter == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert counts.adapter_parts["projector"] > 0
    assert counts.encoders == 300 * cfg.train.graph.node_dim
    work = P.Workload("lora+collab", 8, 512, 1, False)
    cmd = P.launch_command(P.plan(counts, P.Cluster(1, 1, 80.0), work), None, "ds.json")
    assert "train.adapter=lora train.lora.collab_tokens=true" in cmd


def test_label_mf_rows_are_the_like_mfs_users_then_items(ml100k_prepared, tmp_path, monkeypatch):
    """``train.graph.init: label_mf``: row ``u`` and row ``U + i`` are the label-trained MF's
    factors and biases of user ``u`` and item ``i``, so their dot product plus the two biases
    is the MF's logit for the pair (up to its global bias); it needs a CTR task."""
    from dataclasses import replace

    from lorarec.classic.collab import ensure_collab_embeddings
    from lorarec.classic.ctr_models import MF_SETTINGS, ctr_model_scores, ensure_ctr_model

    monkeypatch.setenv("LORAREC_HOME", str(tmp_path / "home"))
    data = PreparedData.open(ml100k_prepared, "ctr")
    cfg = load_config(
        None, ["data.task=ctr", "train.graph.init=label_mf", "train.graph.node_dim=9"]
    )
    emb = ensure_collab_embeddings(data, cfg.train.graph, cfg.train.seed)
    assert emb.shape == (data.num_users + data.num_items, 9)
    settings = replace(MF_SETTINGS, dim=8, seed=cfg.train.seed)
    model, shape, _ = ensure_ctr_model(data, "mf", settings, lambda: pytest.fail("retrained"))
    test = data.samples("test")[:300]
    p = ctr_model_scores(model, "mf", shape, settings, test).astype(np.float64)
    u = emb[[s["user"] for s in test]].astype(np.float64)
    i = emb[[data.num_users + s["target"] for s in test]].astype(np.float64)
    ours = (u[:, :-1] * i[:, :-1]).sum(1) + u[:, -1] + i[:, -1]
    shift = np.log(p / (1 - p)) - ours  # the global bias, the same for every pair
    assert np.ptp(shift) < 1e-3 and np.std(ours) > 0.1
    with pytest.raises(ConfigError, match="label_mf is trained on like labels and needs"):
        load_config(None, ["train.graph.init=label_mf", "train.adapter=graphlora"])
