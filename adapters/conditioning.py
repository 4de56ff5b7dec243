"""The per-batch conditioning signal of the adapters, passed explicitly with each forward.

A :class:`Conditioning` travels with the batch it describes::

    out = peft_model(input_ids=ids, attention_mask=mask, conditioning=cond)
    # or, around any number of forwards and generate():
    with bind_conditioning(peft_model, cond):
        peft_model.generate(input_ids=ids, ...)

Which fields an adapter needs:

=========== ============================================================================
graphlora   ``graph`` + ``node_index`` (the node each placeholder token stands for)
graphmoe    ``graph`` + ``user_node`` (the sample's user node in the subgraph)
ilora       ``sequence_state`` (+ ``item_index`` and ``item_table`` with the hybrid prompt)
reclora     ``sequence_state`` (the sequence recommender over the long history)
collab      ``item_index`` (global node id at user and item placeholders) + ``item_table``
            (the frozen collaborative table)
=========== ============================================================================

The binding lives on the model (a stack owned by the PEFT tuner), never in module-level state:
two models in one process, or nested bindings, do not interfere. Per-sample fields are
``repeat_interleave``-d when a forward runs a multiple of the batch (beam search, candidates
sharing a prompt's cache). Token fields cover the tokens of the forward that carries the
prompt; forwards that extend a KV cache (decoding, candidate continuations) have no
placeholder tokens.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch


@dataclass
class GraphBatch:
    """The sampled subgraphs of a batch, one disjoint component per sample: ``nodes`` (N,)
    global ids; ``edge_index`` (2, E) local indices, directed (sampled neighbour -> the node
    that drew it); ``edge_weight`` (E,) from ``graphlora.gnn.edge_weights``."""

    nodes: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor

    def to(self, device) -> GraphBatch:
        return GraphBatch(*(t.to(device) for t in (self.nodes, self.edge_index, self.edge_weight)))


@dataclass
class Conditioning:
    graph: GraphBatch | None = None
    node_index: torch.Tensor | None = None
    """(batch, tokens) long: local subgraph index of the node a token stands for, -1 elsewhere."""
    user_node: torch.Tensor | None = None
    """(batch,) long: local subgraph index of each sample's user; or (batch, m), -1 padded:
    its history's item nodes (data without users; the gate pools them)."""
    sequence_state: torch.Tensor | None = None
    """(batch, c): the frozen sequence recommender's representation of each sample's history."""
    item_index: torch.Tensor | None = None
    """(batch, tokens) long: item id at item placeholder tokens (hybrid prompt), -1 elsewhere;
    collab: the global node id (user ``u``, item ``U + i``) at user and item placeholders."""
    item_table: torch.Tensor | None = None
    """(items, c): the frozen sequence recommender's item embeddings (hybrid prompt); collab:
    (nodes, node_dim), the frozen collaborative table."""

    def to(self, device) -> Conditioning:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v.to(device)
        return Conditioning(**out)

    @property
    def batch_size(self) -> int | None:
        for t in (self.node_index, self.user_node, self.sequence_state, self.item_index):
            if t is not None:
                return t.shape[0]
        return None

    def require(self, adapter: str, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{adapter}: the conditioning lacks {', '.join(missing)}")

    # --------------------------------------------------------- flat tensors (probe files)

    def to_tensors(self, prefix: str = "cond.") -> dict[str, torch.Tensor]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, GraphBatch):
                for g in fields(v):
                    out[f"{prefix}graph.{g.name}"] = getattr(v, g.name).contiguous()
            elif v is not None:
                out[prefix + f.name] = v.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "cond.") -> Conditioning:
        graph = None
        if f"{prefix}graph.nodes" in tensors:
            graph = GraphBatch(
                *(tensors[f"{prefix}graph.{n}"] for n in ("nodes", "edge_index", "edge_weight"))
            )
        kw = {f.name: tensors.get(prefix + f.name) for f in fields(cls) if f.name != "graph"}
        return cls(graph=graph, **kw)


def expand_batch(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Repeat per-sample rows to a forward's batch (beam search, shared-prompt candidates)."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 0 or batch % t.shape[0]:
        raise ValueError(f"conditioning {what} has batch {t.shape[0]}, the input has {batch}")
    return t.repeat_interleave(batch // t.shape[0], dim=0)


class ConditioningContext:
    """A model's binding of conditioning to forwards, and what the adapters derive from it
    (graph node states, gates, projected item embeddings), computed once per forward.

    A plain object, not a module: it holds no parameters and adds nothing to the state dict.
    ``derive(adapter_name, conditioning, forward)`` is the tuner's function that computes the
    derived tensors; the layers read them with :meth:`state`.

    Gradient checkpointing re-runs layers in the backward pass, after their forward has
    returned, and they must read the state of *that* forward (which may not be the last one:
    several micro-batches can run their forwards before their backwards). Every forward has an
    id; :meth:`checkpoint_context` is non-reentrant checkpointing's ``context_fn``, which records
    the id of the forward a checkpointed layer runs in and names it to :meth:`state` while the
    layer is recomputed. A recomputation whose forward's state is gone is an error, and so is a
    layer that runs outside a forward and outside a recomputation without bound conditioning.
    """

    KEEP = 16
    """Forwards whose derived state is kept for recomputation (the most recent ones)."""

    def __init__(self, derive):
        self._derive = derive
        self.stack: list[Conditioning | None] = []
        self.forward: dict = {}
        self._cache: dict[str, dict] = {}
        self._next_id = 0
        self._kept: OrderedDict[int, dict[str, dict]] = OrderedDict()
        self._recomputing: int | None = None

    @contextlib.contextmanager
    def bind(self, cond: Conditioning | None):
        self.stack.append(cond)
        try:
            yield
        finally:
            self.stack.pop()

    def current(self) -> Conditioning | None:
        for c in reversed(self.stack):
            if c is not None:
                return c
        return None

    def begin_forward(self, batch: int, tokens: int, incremental: bool) -> None:
        self._next_id += 1
        self.forward = {
            "batch": batch,
            "tokens": tokens,
            "incremental": incremental,
            "id": self._next_id,
        }
        self._cache = {}

    def end_forward(self) -> None:
        if torch.is_grad_enabled() and self._cache:
            self._kept[self.forward["id"]] = self._cache
            while len(self._kept) > self.KEEP:
                self._kept.popitem(last=False)
        self._cache = {}
        self.forward = {}

    def checkpoint_context(self):
        """``context_fn`` of ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``, called
        when a checkpointed layer runs in a forward: a context for the forward (nothing to do)
        and one for its recomputation, which names the forward whose state the layer reads."""
        forward_id = self.forward.get("id")
        return contextlib.nullcontext(), self._recomputation(forward_id)

    @contextlib.contextmanager
    def _recomputation(self, forward_id: int | None):
        outer, self._recomputing = self._recomputing, forward_id
        try:
            yield
        finally:
            self._recomputing = outer

    def state(self, adapter_name: str) -> dict:
        if self._recomputing is not None:
            kept = self._kept.get(self._recomputing, {})
            if adapter_name not in kept:
                raise RuntimeError(
                    f"adapter {adapter_name!r}: gradient checkpointing recomputes a layer of "
                    f"forward {self._recomputing}, whose conditioning state is gone (only the "
                    f"last {self.KEEP} forwards' are kept); run each backward within "
                    f"{self.KEEP} forwards of its own"
                )
            return kept[adapter_name]
        if adapter_name in self._cache:
            return self._cache[adapter_name]
        cond = self.current()
        if cond is None:
            raise RuntimeError(
                f"adapter {adapter_name!r}: no conditioning bound; pass conditioning=... to the "
                "model's forward, or wrap the call in `with bind_conditioning(model, cond):`"
                + (
                    ""
                    if self.forward
                    else " (a layer recomputed by gradient checkpointing needs the model's "
                    "checkpointing enabled by lorarec.adapters.enable_gradient_checkpointing)"
                )
            )
        out = self._derive(adapter_name, cond, self.forward)
        if self.forward:
            self._cache[adapter_name] = out
        return out


def find_context(model) -> ConditioningContext:
    for m in model.modules():
        ctx = m.__dict__.get("conditioning_context")
        if ctx is not None:
            return ctx
    raise ValueError("the model has no lorarec adapter that takes conditioning")


@contextlib.contextmanager
def bind_conditioning(model, cond: Conditioning | None):
    """Bind ``cond`` to every forward (and ``generate``) of ``model`` inside the block."""
    with find_context(model).bind(cond):
        yield


def gradient_checkpointing_kwargs(model) -> dict:
    """Keyword arguments of non-reentrant gradient checkpointing for ``model``: with a lorarec
    adapter, its conditioning context's ``context_fn``, so that recomputed layers read the
    state of the forward they belong to."""
    kwargs: dict = {"use_reentrant": False}
    contexts = [
        m.__dict__["conditioning_context"]
        for m in model.modules()
        if "conditioning_context" in m.__dict__
    ]
    if contexts:  # none for PEFT's own LoRA, which takes no conditioning
        kwargs["context_fn"] = contexts[0].checkpoint_context
    return kwargs


def enable_gradient_checkpointing(model) -> None:
    """Gradient checkpointing of every decoder layer of the PEFT ``model``'s backbone,
    non-reentrant (it runs under ZeRO-3's gather hooks and needs no input that requires grad),
    with the adapters' conditioning passed to each recomputation."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable(gradient_checkpointing_kwargs(model))
    base.config.use_cache = False
