"""The link-prediction heuristics against hand-computed values on small graphs."""

import math

import pytest
import torch

from dgm_pyro.data.graphs import GraphSequence
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.metrics import forecast_scores
from dgm_pyro.models.link_heuristics import (EWMA, EWMA_DECAYS, AdamicAdar, CommonNeighbours, EdgeBank, Katz,
                                             PreferentialAttachment, katz_index, link_heuristics)


def _sequence(snapshots, n=5, directed=False):
    edges = [torch.tensor(s, dtype=torch.long).T.reshape(2, -1) for s in snapshots]
    return GraphSequence(x=torch.zeros(len(snapshots), n, 0), edges=edges, directed=directed)


# a path 0-1-2-3 built over three snapshots, node 4 alone
PATH = _sequence([[(0, 1)], [(1, 2)], [(2, 3), (0, 1)]])


def test_neighbourhood_scores_by_hand():
    cn, aa, pa = (h.scores(PATH) for h in (CommonNeighbours(), AdamicAdar(), PreferentialAttachment()))
    # union graph: 0-1, 1-2, 2-3; degrees 1, 2, 2, 1, 0
    assert cn[0, 2] == 1 and cn[1, 3] == 1 and cn[0, 3] == 0 and cn[0, 4] == 0 and cn[2, 0] == 1
    assert aa[0, 2] == pytest.approx(1 / math.log(2)) and aa[1, 3] == pytest.approx(1 / math.log(2))
    assert aa[0, 3] == 0
    assert pa[1, 2] == 4 and pa[0, 3] == 1 and pa[0, 4] == 0


def test_katz_is_the_damped_sum_of_walks():
    katz = Katz(damping=0.5)
    got = katz.scores(PATH)
    a = torch.zeros(5, 5, dtype=torch.float64)
    for u, v in [(0, 1), (1, 2), (2, 3)]:
        a[u, v] = a[v, u] = 1
    beta = 0.5 / float(torch.linalg.eigvalsh(a)[-1])
    series = sum(beta ** k * torch.linalg.matrix_power(a, k) for k in range(1, 80))
    assert torch.allclose(got, series, atol=1e-10)
    assert got[0, 3] > 0 and got[0, 4] == 0 and got[0, 1] > got[0, 2] > got[0, 3]
    with pytest.raises(DgmPyroError, match="damping must be in"):
        Katz(damping=1.0)


def test_katz_index_by_degree_and_in_batches():
    """beta = damping / the largest degree (2 on the path) gives the same series with that beta; a batch of graphs
    is scored graph by graph; an empty graph scores zero."""
    a = torch.zeros(5, 5, dtype=torch.float64)
    for u, v in [(0, 1), (1, 2), (2, 3)]:
        a[u, v] = a[v, u] = 1
    series = sum((0.5 / 2) ** k * torch.linalg.matrix_power(a, k) for k in range(1, 80))
    assert torch.allclose(katz_index(a, 0.5, normalise="degree"), series, atol=1e-12)
    star = torch.zeros(5, 5, dtype=torch.float64)
    star[0, 1:] = star[1:, 0] = 1
    batch = katz_index(torch.stack([a, star, torch.zeros(5, 5)]), 0.3, normalise="degree")
    assert torch.allclose(batch[0], katz_index(a, 0.3, normalise="degree"))
    assert torch.allclose(batch[1], katz_index(star, 0.3, normalise="degree"))
    assert torch.equal(batch[2], torch.zeros(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="normalise"):
        katz_index(a, 0.5, normalise="spectral")


def test_edgebank_remembers_every_past_edge_or_those_of_its_window():
    full, last = EdgeBank().scores(PATH), EdgeBank(window=1).scores(PATH)
    assert full[0, 1] == full[1, 2] == full[2, 3] == 1 and full[0, 2] == 0 and full[1, 0] == 1  # symmetric
    assert last[1, 2] == 0 and last[2, 3] == 1 and last[0, 1] == 1
    assert EdgeBank(window=2).name == "EdgeBank (last 2)"
    with pytest.raises(DgmPyroError, match="window must be >= 1"):
        EdgeBank(window=0)


def test_ewma_averages_with_the_decay_its_history_prefers():
    """The average by hand, and the decay chosen by a brute-force one-step Brier score over every pair."""
    seq = _sequence([[(0, 1), (2, 3)], [(0, 1)], [(0, 1), (2, 3)], [(0, 1)], [(0, 1), (2, 3), (1, 4)],
                     [(0, 1), (1, 4)]])
    p = EWMA(decay=0.5).scores(seq)
    w = [0.5 ** (5 - s) for s in range(6)]
    assert p[2, 3] == pytest.approx((w[0] + w[2] + w[4]) / sum(w)) and p[0, 1] == pytest.approx(1.0)
    assert p[0, 2] == 0

    pairs = [(u, v) for u in range(5) for v in range(u + 1, 5)]
    adj = [seq.adjacency(t) for t in range(6)]

    def brier(decay):
        total = 0.0
        for t in range(1, 6):
            ws = [decay ** (t - 1 - s) for s in range(t)]
            for u, v in pairs:
                pred = sum(wi * float(adj[s][u, v]) for s, wi in enumerate(ws)) / sum(ws)
                total += (pred - float(adj[t][u, v])) ** 2 / len(pairs)
        return total

    best = min(EWMA_DECAYS, key=brier)
    model = EWMA()
    model.scores(seq)
    assert model.chosen == best and brier(best) < brier(1.0) - 1e-9
    with pytest.raises(DgmPyroError, match="decay must be in"):
        EWMA(decay=0.0)


def test_pairs_and_tables_agree_and_ranking_scores_have_no_probability_metrics():
    future = _sequence([[(0, 2), (2, 3)]])
    for h in link_heuristics():
        scores = h.scores(PATH)
        pairs = torch.tensor([[0, 1, 2], [2, 3, 4]])
        assert torch.allclose(h.edge_probability_at(PATH, pairs), scores[pairs[0], pairs[1]].float())
        (row,) = forecast_scores(h.forecast(PATH, 1), future, PATH, 1, probabilistic=h.probabilistic)
        assert math.isnan(row["crps"]) and 0 <= row["auc"] <= 1
        assert math.isnan(row["brier"]) != h.probabilistic, h.name
    assert [h.name for h in link_heuristics()] == ["EWMA", "EdgeBank", "common neighbours", "Adamic-Adar",
                                                   "preferential attachment", "Katz"]
