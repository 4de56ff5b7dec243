from __future__ import annotations

import numpy as np
import torch

from lorarec.adapters.graphlora.gnn import GraphEncoder, edge_weights
from lorarec.graph_service.sampler import NeighborSampler


def ring(n=8):
    nbrs = [sorted({(i - 1) % n, (i + 1) % n}) for i in range(n)]
    indptr = np.cumsum([0] + [len(x) for x in nbrs])
    return indptr, np.array([j for x in nbrs for j in x])


def test_lightgcn_states_follow_the_normalised_propagation():
    torch.manual_seed(0)
    indptr, indices = ring()
    sub = NeighborSampler(indptr, indices).sample(np.arange(8), [-1], seed=0)
    nodes = torch.as_tensor(sub.nodes)
    ei = torch.as_tensor(sub.edge_index)
    w = edge_weights(ei, torch.as_tensor(sub.degrees), torch.as_tensor(sub.sampled))
    enc = GraphEncoder(8, dim=6, rank=4, layers=2)
    out = enc(nodes, ei, w)
    # the same by dense matrices: A_hat = D^-1/2 A D^-1/2 on the ring (every degree 2)
    A = torch.zeros(8, 8)
    for i in range(8):
        A[i, (i + 1) % 8] = A[i, (i - 1) % 8] = 0.5
    e0 = enc.embedding.weight[nodes]
    P = torch.zeros(8, 8)
    P[torch.arange(8), nodes] = 1.0  # local order -> global
    A_local = P @ A @ P.T
    expected = enc.out((e0 + A_local @ e0 + A_local @ A_local @ e0) / 3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # gradients reach the embeddings and the output map
    out.sum().backward()
    assert enc.embedding.weight.grad.abs().sum() > 0 and enc.out.weight.grad.abs().sum() > 0


def test_text_features_are_concatenated_and_gcn_option_runs():
    torch.manual_seed(0)
    indptr, indices = ring()
    sub = NeighborSampler(indptr, indices).sample(np.array([0, 3]), [2, 2], seed=1)
    nodes, ei = torch.as_tensor(sub.nodes), torch.as_tensor(sub.edge_index)
    w = edge_weights(ei, torch.as_tensor(sub.degrees), torch.as_tensor(sub.sampled))
    text = torch.randn(8, 5)
    for kind in ("lightgcn", "gcn"):
        enc = GraphEncoder(8, dim=6, rank=4, layers=2, kind=kind, text_features=text)
        assert enc(nodes, ei, w).shape == (len(nodes), 4)
        assert enc.out.in_features == 11
