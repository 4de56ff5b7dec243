"""The training side: backbone loading, prompts, the sequence encoder, evaluation (and, later,
the DeepSpeed loop). Ranks import this package, never ``lorarec.launch``."""
