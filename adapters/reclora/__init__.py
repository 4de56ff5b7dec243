"""RecLoRA: a bank of meta-LoRAs mixed per user by a router."""

from lorarec.adapters.reclora.layer import RecLoraConfig, RecLoraModel

__all__ = ["RecLoraConfig", "RecLoraModel"]
