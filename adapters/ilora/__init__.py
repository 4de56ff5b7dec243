"""iLoRA: instance-wise mixture of LoRA experts gated by the user's behaviour sequence."""
