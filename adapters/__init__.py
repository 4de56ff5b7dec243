"""Graph-aware, personalised and mixture-of-experts LoRA adapters, as PEFT methods.

Importing this package registers five methods with PEFT (``graphlora``, ``reclora``,
``ilora``, ``graphmoe``, and ``collab``: plain LoRA with collaborative tokens); after that, ``get_peft_model(model, GraphLoraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work for them as for LoRA. Each forward
takes the batch's :class:`Conditioning` (``conditioning=`` or :func:`bind_conditioning`).

Every family shares one low-rank core (:class:`~lorarec.adapters.core.LowRankBank`): a bank of
``K`` pairs of factors ``A_k`` (d_in -> r) and ``B_k`` (r -> d_out) applied with one matmul for all
``A`` and one for all ``B``. Tensors in, tensors out: no trainer, no Ray, no files beyond PEFT's.
"""

from lorarec.adapters.collab.layer import CollabConfig, CollabModel
from lorarec.adapters.conditioning import (
    Conditioning,
    GraphBatch,
    bind_conditioning,
    enable_gradient_checkpointing,
)
from lorarec.adapters.graphlora.layer import GraphLoraConfig, GraphLoraModel
from lorarec.adapters.graphmoe.layer import GraphMoeConfig, GraphMoeModel
from lorarec.adapters.ilora.layer import ILoraConfig, ILoraModel
from lorarec.adapters.reclora.layer import RecLoraConfig, RecLoraModel
from lorarec.adapters.tuner import AdapterTuner, enable_conditioning_kwarg

CONFIGS = {
    "graphlora": GraphLoraConfig,
    "reclora": RecLoraConfig,
    "ilora": ILoraConfig,
    "graphmoe": GraphMoeConfig,
    "collab": CollabConfig,
}


__all__ = [
    "CONFIGS",
    "AdapterTuner",
    "CollabConfig",
    "CollabModel",
    "Conditioning",
    "GraphBatch",
    "GraphLoraConfig",
    "GraphLoraModel",
    "GraphMoeConfig",
    "GraphMoeModel",
    "ILoraConfig",
    "ILoraModel",
    "RecLoraConfig",
    "RecLoraModel",
    "bind_conditioning",
    "enable_conditioning_kwarg",
    "enable_gradient_checkpointing",
]
