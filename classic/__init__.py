"""The classic recommenders lorarec trains before the ranks start, and their caches: SASRec,
collaborative (MF/LightGCN) node embeddings, MiniLM title features, the label-trained CTR
models and the evaluation's baselines; ``inputs.py`` prepares what an adapter reads."""
