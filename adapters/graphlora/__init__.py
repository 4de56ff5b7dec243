"""GraphLoRA: graph message passing inside the LoRA pathway."""
