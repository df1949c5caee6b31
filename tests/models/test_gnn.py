"""SnapshotEncoder: the GCN path (cached normalised adjacency and its transpose, a custom sparse product)
against torch-geometric's own layers on the edge index, values and gradients."""

import pytest
import torch

from dgm_pyro.models.gnn import SnapshotEncoder


@pytest.mark.parametrize("directed", [False, True])
def test_gcn_encoding_and_gradients_equal_torch_geometric_on_the_edge_index(directed):
    torch.manual_seed(0)
    n = 30
    a = torch.rand(n, n) < 0.15
    a.fill_diagonal_(False)
    if not directed:
        a = a | a.T
    index = a.nonzero().T.contiguous()
    enc = SnapshotEncoder(5, 8, "gcn")
    x = torch.randn(n, 5, requires_grad=True)
    ours = enc(x, index)
    (g_ours,) = torch.autograd.grad((ours ** 2).sum(), x)
    w_ours = torch.autograd.grad(enc(x, index).sum(), enc.conv1.lin.weight)[0]
    # torch-geometric's GCNConv normalising the edge index itself: the reference
    c1, c2 = enc.conv1, enc.conv2
    c1.normalize = c2.normalize = c1.add_self_loops = c2.add_self_loops = True
    ref = enc.skip(x) + c2(torch.relu(c1(x, index)), index)
    (g_ref,) = torch.autograd.grad((ref ** 2).sum(), x)
    w_ref = torch.autograd.grad((enc.skip(x) + c2(torch.relu(c1(x, index)), index)).sum(), c1.lin.weight)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_ours, w_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "gat", "sage"])
def test_encode_sequence_equals_one_call_per_snapshot(kind):
    """Several snapshots per call as disjoint copies of the nodes: the same as encoding each alone."""
    torch.manual_seed(1)
    n, t = 12, 5
    edges = []
    for _ in range(t):
        a = torch.rand(n, n) < 0.2
        edges.append(a.triu(1).nonzero().T.contiguous())
    enc = SnapshotEncoder(3, 6, kind)
    inputs = torch.randn(t, n, 3)
    batched = enc.encode_sequence(inputs, edges, directed=False, nodes_per_call=3 * n)
    single = torch.stack([enc(inputs[i], torch.cat([e, e.flip(0)], 1)) for i, e in enumerate(edges)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
