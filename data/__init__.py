"""Data sources, preparation (splits, candidates, graph, shards) and the prepared-data reader."""
