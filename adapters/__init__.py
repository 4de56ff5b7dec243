"""Adapter layers: tensors in, tensors out. No trainer, no Ray, no files beyond PEFT's format.

Every family shares one low-rank core (:class:`~lorarec.adapters.core.LowRankBank`): a bank of
``K`` pairs of factors ``A_k`` (d_in -> r) and ``B_k`` (r -> d_out) applied with one matmul for all
``A`` and one for all ``B``.
"""
