"""What the four families share to be PEFT methods: registration, the layer skeleton, the tuner.

Each family (``graphlora``, ``reclora``, ``ilora``, ``graphmoe``) defines

* a config (a :class:`AdapterConfig` subclass, a dataclass like PEFT's ``LoraConfig``);
* a layer (a :class:`AdapterLinear` subclass) whose ``delta`` is the family's formula;
* a tuner (a :class:`AdapterTuner` subclass) that creates the model-level modules the layers
  share (graph network, gate, projector) and ``derive``-s, once per forward, what the layers
  read from the batch's :class:`~lorarec.adapters.conditioning.Conditioning`.

and is registered with PEFT (``register_peft_method``), so ``get_peft_model``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for LoRA once ``lorarec.adapters``
is imported. Shared modules sit on the tuner in a ``ModuleDict`` per adapter named
``<prefix><what>`` (e.g. ``graphlora_gnn``): PEFT saves them next to the layers' factors and
puts them back on load.

Under ZeRO-3 every adapter module is *called* (never reached into), so DeepSpeed gathers its
partitioned parameters when it runs. None of them is declared a ZeRO-3 leaf module: leaves are
for modules whose execution varies per batch (a router that runs a subset of experts), and
here every forward runs the same modules in the same order; all experts of a bank run in one
batched call, whatever the gate says. (With DeepSpeed 0.19.8, declaring the bank or the graph
network a leaf made the backward pass fail on a released parameter in our runs.)
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType
from torch import nn

from lorarec.adapters.conditioning import ConditioningContext
from lorarec.adapters.core import LowRankBank

CONDITIONING_KWARG = "conditioning"


def extend_peft_type(name: str) -> PeftType:
    """Add ``name`` to PEFT's ``PeftType`` enum (idempotent): ``register_peft_method`` requires a
    member, and PEFT's configs serialise ``peft_type`` by value."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses member names
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    return member


def register_method(name: str, config_cls, model_cls) -> None:
    """Register a family with PEFT; idempotent, and a re-imported module replaces its entries."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import register_peft_method

    peft_type = extend_peft_type(name.upper())
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is config_cls:
        return
    for mapping in (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        mapping.pop(peft_type, None)
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=name + "_")


# ---------------------------------------------------------------------------------- config


@dataclass
class AdapterConfig(PeftConfig):
    """The fields every family shares (the meaning of PEFT's ``LoraConfig`` fields)."""

    r: int = field(default=8, metadata={"help": "rank of the low-rank update (total, all banks)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "scale s = lora_alpha / r"})
    lora_dropout: float = field(default=0.0)
    target_modules: list[str] | str | None = field(default=None)
    exclude_modules: list[str] | str | None = field(default=None)
    layers_to_transform: list[int] | int | None = field(default=None)
    layers_pattern: list[str] | str | None = field(default=None)
    bias: str = field(default="none")
    modules_to_save: list[str] | None = field(default=None)
    init_weights: bool = field(
        default=True, metadata={"help": "True: B = 0 (the adapter starts as the backbone)"}
    )
    method: str = ""  # the PEFT type name, set by subclasses

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType[self.method.upper()]
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.r < 1:
            raise ValueError(f"{self.method}: r must be at least 1, got {self.r}")


# ----------------------------------------------------------------------------------- layer

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


class AdapterLayer(BaseTunerLayer):
    """PEFT layer skeleton: a :class:`LowRankBank` per adapter in ``<prefix>bank``, a dropout
    per adapter in ``<prefix>dropout``; subclasses add per-module parts (RecLoRA's routers)."""

    prefix = ""
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names = ("rank", "scaling", "settings")

    def _init_layer(self, base_layer: nn.Module, context: ConditioningContext, key: str) -> None:
        self.base_layer = base_layer
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{self.prefix.rstrip('_')} adapts nn.Linear only, got {type(base)}")
        # never read weight.shape: under ZeRO-3 a partitioned weight is empty
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scaling, self.settings = {}, {}, {}
        setattr(self, self.prefix + "bank", nn.ModuleDict({}))
        setattr(self, self.prefix + "dropout", nn.ModuleDict({}))
        self._disable_adapters = False
        self.merged_adapters = []
        self.__dict__["context"] = context  # a plain object, not a submodule
        m = _LAYER_INDEX.findall(key)
        self.layer_index = int(m[-1]) if m else None

    @property
    def banks(self) -> nn.ModuleDict:
        return getattr(self, self.prefix + "bank")

    @property
    def dropouts(self) -> nn.ModuleDict:
        return getattr(self, self.prefix + "dropout")

    def bank_shape(self, config) -> tuple[int, int]:
        """(banks K, rank per bank)."""
        return 1, config.r

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False) -> None:
        banks, rank = self.bank_shape(config)
        self.rank[adapter_name] = config.r
        self.scaling[adapter_name] = self.scale(config)
        self.settings[adapter_name] = config
        self.banks[adapter_name] = LowRankBank(
            self.in_features, self.out_features, rank, banks, zero_B=config.init_weights
        )
        self.dropouts[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.add_parts(adapter_name, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def scale(self, config) -> float:
        return config.lora_alpha / config.r

    def add_parts(self, adapter_name: str, config) -> None:
        """Per-module parts beyond the bank (RecLoRA's router)."""

    def delta(self, name: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        raise NotImplementedError

    def low_rank(self, name: str, x: torch.Tensor, **kw) -> torch.Tensor:
        """The adapter's bank applied to ``x`` (batched, or the reference loops)."""
        bank = self.banks[name]
        if getattr(self, "reference", False):
            return bank.reference(x, per_sample=self.reference_per_sample, **kw)
        return bank(x, **kw)

    reference_per_sample = False


class AdapterLinear(nn.Module, AdapterLayer):
    reference = False
    """True (set per instance, by benchmarks and tests): compute the update the straightforward
    way (:meth:`LowRankBank.reference`: loops over experts or samples)."""

    def __init__(self, base_layer, adapter_name, config, context, key):
        super().__init__()
        self._init_layer(base_layer, context, key)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise NotImplementedError(
            f"{self.prefix.rstrip('_')} depends on each batch's conditioning and cannot be merged"
        )

    def unmerge(self) -> None:
        pass

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name not in self.banks:
                continue
            bank = self.banks[name]
            xa = self._cast_input_dtype(x, bank.A.dtype)
            state = self.context.state(name)
            update = self.delta(name, self.dropouts[name](xa), state)
            result = result + (self.scaling[name] * update).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return f"{self.prefix.rstrip('_')}." + super().__repr__()


# ----------------------------------------------------------------------------------- tuner


class AdapterTuner(BaseTuner):
    prefix = ""
    tuner_layer_cls = AdapterLayer
    layer_cls = AdapterLinear
    target_module_mapping = {
        m: ["q_proj", "v_proj"] for m in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
    }
    uses_shared_state = True  # shared modules live on the tuner
    shared_names: tuple[str, ...] = ()  # ModuleDicts on the tuner, without the prefix

    # ------------------------------------------------------------- shared state

    def _pre_injection_hook(self, model: nn.Module, config, adapter_name: str) -> None:
        if "conditioning_context" in self.__dict__:
            return
        for n in self.shared_names:
            setattr(self, self.prefix + n, nn.ModuleDict({}))
        self.__dict__["conditioning_context"] = ConditioningContext(self._derive)
        self.__dict__["_hooks"] = [
            model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True),
            model.register_forward_hook(self._model_post_hook, always_call=True),
        ]
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None:
            self.__dict__["_hooks"].append(emb.register_forward_hook(self._embedding_hook))

    def shared(self, what: str) -> nn.ModuleDict:
        return getattr(self, self.prefix + what)

    def _ensure_shared(self, config, adapter_name: str, device) -> None:
        for n in self.shared_names:
            d = self.shared(n)
            if adapter_name not in d:
                module = self.make_shared(n, config)
                if device is not None:
                    module = module.to(device)
                d[adapter_name] = module

    def make_shared(self, what: str, config) -> nn.Module:
        raise NotImplementedError

    def _model_pre_hook(self, module, args, kwargs):
        ctx = self.conditioning_context
        cond = kwargs.pop(CONDITIONING_KWARG, None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        past = kwargs.get("past_key_values")
        incremental = past is not None and past.get_seq_length() > 0
        ctx.stack.append(cond)
        ctx.begin_forward(int(ids.shape[0]), int(ids.shape[1]), incremental)
        if ctx.current() is not None:
            # Derived state (graph network, gates) is computed here, before any decoder layer
            # runs: under gradient checkpointing a layer's recomputation must save the same
            # tensors as its forward did, so nothing the layers share may first be computed
            # inside one of them.
            for name in self.active_adapters:
                if name in self.peft_config:
                    ctx.state(name)
        return args, kwargs

    def _model_post_hook(self, module, args, output):
        ctx = self.conditioning_context
        ctx.end_forward()
        if ctx.stack:
            ctx.stack.pop()

    def _embedding_hook(self, module, args, output):
        """Replace the input embeddings of placeholder tokens (LLaRA's hybrid prompt)."""
        ctx = self.conditioning_context
        if not ctx.forward or ctx.forward["incremental"]:
            return None
        for name in self.active_adapters:
            if not self.replaces_embeddings(name):
                continue
            state = ctx.state(name)
            if state.get("token_embeddings") is None:
                continue
            mask = state["token_mask"].unsqueeze(-1)
            output = torch.where(mask, state["token_embeddings"].to(output.dtype), output)
        return output

    def replaces_embeddings(self, adapter_name: str) -> bool:
        return False

    def _derive(self, adapter_name: str, cond, forward: dict) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------- injection

    def _create_and_replace(
        self, config, adapter_name, target, target_name, parent, current_key, **kwargs
    ):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        weight = getattr(base, "weight", None)
        device = None if weight is None or weight.device.type == "meta" else weight.device
        self._ensure_shared(config, adapter_name, device)
        if isinstance(target, AdapterLayer):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        new = self.layer_cls(target, adapter_name, config, self.conditioning_context, current_key)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    # the shared modules are outside self.model: BaseTuner's model walks miss them
    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for n in self.shared_names:
            for name, m in self.shared(n).items():
                m.requires_grad_(name in active and not inference_mode)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for n in self.shared_names:
            for name, m in self.shared(n).items():
                if name in names:
                    m.requires_grad_(requires_grad)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for n in self.shared_names:
            for name, m in self.shared(n).items():
                m.requires_grad_(name in self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for n in self.shared_names:
            if adapter_name in self.shared(n):
                del self.shared(n)[adapter_name]

    def _check_merge_allowed(self):
        raise ValueError(f"{self.prefix.rstrip('_')} adapters depend on the batch: no merging")

    def _unload_and_optionally_merge(self, *args, **kwargs):
        for h in self.__dict__.get("_hooks", []):
            h.remove()
        return super()._unload_and_optionally_merge(*args, **kwargs)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT calls this around ``PeftModel.forward`` / ``generate`` with the call's kwargs."""
        cond = kwargs.get(CONDITIONING_KWARG)
        with self.conditioning_context.bind(cond):
            yield


def enable_conditioning_kwarg(peft_model) -> None:
    """Let ``peft_model.generate(..., conditioning=cond)`` strip the kwarg before transformers
    validates the generation kwargs (forward works without this)."""
    peft_model.special_peft_forward_args = set(peft_model.special_peft_forward_args) | {
        CONDITIONING_KWARG
    }
