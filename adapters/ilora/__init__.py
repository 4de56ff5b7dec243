"""iLoRA: LoRA experts gated by the user's behaviour sequence."""

from lorarec.adapters.ilora.layer import ILoraConfig, ILoraModel

__all__ = ["ILoraConfig", "ILoraModel"]
