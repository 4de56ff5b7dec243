"""RecLoRA: a bank of meta-LoRAs mixed per user by a router driven by a sequential recommender."""
