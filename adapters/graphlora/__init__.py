"""GraphLoRA: a graph message-passing network inside the LoRA pathway."""

from lorarec.adapters.graphlora.layer import GraphLoraConfig, GraphLoraModel

__all__ = ["GraphLoraConfig", "GraphLoraModel"]
