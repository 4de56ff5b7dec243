"""Collab tokens: plain LoRA with collaborative embeddings as input tokens (CoLLM's design)."""

from lorarec.adapters.collab.layer import CollabConfig, CollabModel

__all__ = ["CollabConfig", "CollabModel"]
