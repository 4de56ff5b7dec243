"""lorarec: LLM recommenders fine-tuned with graph-aware, personalised and MoE LoRA adapters."""

__version__ = "0.1.0"
