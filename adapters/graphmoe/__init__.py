"""GraphMoE: iLoRA's experts gated by the GraphLoRA node state of the user."""

from lorarec.adapters.graphmoe.layer import GraphMoeConfig, GraphMoeModel

__all__ = ["GraphMoeConfig", "GraphMoeModel"]
