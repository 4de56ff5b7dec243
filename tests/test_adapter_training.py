"""Every adapter type trains through `lorarec train`: real deepspeed launcher, 2 ranks, ZeRO-3,
tiny Llama; checkpoints, resume, export through PEFT, evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorarec.core.config import load_config
from tests.test_trainer import run_train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# case: (train.adapter, data, PEFT type, overrides). graphlora and reclora take neighbourhoods
# and histories from the graph service (real Ray actors); the others from the in-process sampler,
# which the service is tested equal to (tests/test_graph_service.py). The adapters whose inputs
# differ on data without user ids run on the sequences format of the LLaRA/iLoRA benchmarks
# (`ml100k_sequences`), whose graph is an item-item transition graph: GraphLoRA's node embeddings
# are then pre-trained on that graph and its neighbourhoods are item neighbourhoods, GraphMoE's
# gate pools the history's item states, and the collaborative-token LoRA embeds item nodes only.
# RecLoRA and iLoRA condition on SASRec and run on user-id data (on data without users they read
# the sample's own history, the path iLoRA's in-process runs take; SASRec on prefix rows:
# tests/test_sasrec.py).
ADAPTERS = {
    "graphlora": ("graphlora", "sequences", "GRAPHLORA", ["train.graph.fanouts=[5,3]"]),
    "reclora": ("reclora", "interactions", "RECLORA", ["train.reclora.banks=4"]),
    "ilora": (
        "ilora",
        "interactions",
        "ILORA",
        ["train.ilora.hybrid_prompt=true", "graph_service.backend=inprocess"],
    ),
    "graphmoe": (
        "graphmoe",
        "sequences",
        "GRAPHMOE",
        [
            "train.graph.network=ngcf",
            "train.graph.text_features=true",
            "graph_service.backend=inprocess",
        ],
    ),
    "lora_collab": (
        "lora",
        "sequences",
        "COLLAB",
        ["train.lora.collab_tokens=true", "graph_service.backend=inprocess"],
    ),
}


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_adapter_trains_exports_and_evaluates(
    ml100k_prepared, ml100k_sequences, minilm, tmp_path, case
):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    import lorarec.adapters  # noqa: F401  (registers the methods with PEFT)
    from lorarec.adapters import Conditioning
    from lorarec.data.prepared import PreparedData
    from lorarec.trainer.adapter import attach_adapter
    from lorarec.trainer.backbone import load_backbone

    adapter, kind, peft_type, extra = ADAPTERS[case]
    data_dir = ml100k_sequences if kind == "sequences" else ml100k_prepared
    assert (PreparedData.open(data_dir, "next_item").num_users == 0) == (kind == "sequences")
    run = tmp_path / case
    proc = run_train(
        data_dir,
        run,
        f"train.adapter={adapter}",
        *extra,
        "train.max_steps=5",
        "train.checkpoint_every=3",
        "train.evaluate=true",
        "sasrec.epochs=1",
        "train.graph.init_epochs=2",
        "eval.baselines=[popularity]",
        "eval.llm_limit=3",
        "eval.llm_methods=[likelihood,generation]",
        "eval.max_new_tokens=4",
        "eval.bootstrap=20",
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    tags = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step-00000003", "step-00000005"]
    saved = json.loads((run / "adapter/adapter_config.json").read_text())
    assert saved["peft_type"] == peft_type
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 5 and all(x["loss"] > 0 for x in steps)

    cfg = load_config(run / "config.yaml")
    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    # every trainable part moved during training: compare with the initial adapter
    backbone, _ = load_backbone(cfg.model)
    initial = get_peft_model_state_dict(attach_adapter(backbone, cfg, data))
    trained = load_file(str(run / "adapter/adapter_model.safetensors"))
    assert set(trained) == set(initial)
    frozen = {k for k in trained if k.endswith("text_features")}  # a buffer: MiniLM features
    unchanged = [
        k for k in trained if k not in frozen and torch.equal(trained[k], initial[k].float())
    ]
    assert not unchanged, f"training did not move {unchanged}"

    # the exported adapter, loaded with PEFT, reproduces the trained model's probe logits
    backbone, _ = load_backbone(cfg.model)
    probe = load_file(str(run / "probe.safetensors"))
    cond = Conditioning.from_tensors(probe)
    mask = probe["attention_mask"].bool()
    with torch.no_grad():
        base = backbone(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        model = PeftModel.from_pretrained(backbone, str(run / "adapter")).eval()
        tuned = model(
            input_ids=probe["input_ids"], attention_mask=probe["attention_mask"], conditioning=cond
        ).logits
    assert (tuned[mask] - probe["logits"][mask]).abs().max() <= 1e-4
    assert (base[mask] - probe["logits"][mask]).abs().max() > 1e-3
    results = json.loads((run / "results.json").read_text())
    rows = [name for name in results["methods"] if adapter in name]
    assert any("likelihood" in r for r in rows) and any("generation" in r for r in rows)
    if case == "lora_collab":  # the collab method is the one evaluated
        assert all("lora+collab" in r for r in rows), rows


def test_text_features_are_minilm_title_embeddings(ml100k_prepared, minilm):
    import numpy as np

    from lorarec.classic.text_features import embed_titles, ensure_text_features
    from lorarec.data.prepared import PreparedData

    data = PreparedData.open(ml100k_prepared, "next_item")
    feats = ensure_text_features(data)
    assert feats.shape == (data.num_users + data.num_items, 384)
    assert not feats[: data.num_users].any()  # users have no text
    np.testing.assert_allclose(np.linalg.norm(feats[data.num_users :], axis=1), 1.0, atol=1e-4)
    # an item's row is its own title's embedding, and the cache returns the same array
    np.testing.assert_allclose(
        feats[data.num_users + 5], embed_titles([data.titles[5]])[0], atol=1e-4
    )
    np.testing.assert_array_equal(ensure_text_features(data, create=False), feats)
