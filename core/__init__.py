"""Pieces every lorarec process imports: errors, configs, assets, atomic file writes."""
