"""benchmarks/graph_rolling.py's summary: the best baseline per step, and the model's gap to it with its standard
error over origins, checked against values worked out by hand."""

import math

import pytest


@pytest.fixture(scope="module")
def rolling(load_benchmark):
    return load_benchmark("graph_rolling")


def _row(t1, name, h, value):
    return {"t1": t1, "forecaster": name, "h": h, "auc": value, "ap": value / 2, "ap_1to1": value,
            "ece": 0.001 * h, "pit_coverage_50": 0.5, "pit_coverage_90": 0.9}


def test_gap_to_the_best_baseline_over_origins(rolling):
    # two origins, two seeds; EWMA is the better baseline at every step (mean 0.75 against Katz's 0.65)
    runs = {"default": {}}
    for seed, shift in ((0, 0.0), (1, 0.02)):
        rows = []
        for h in range(1, 6):
            rows += [_row(10, "EWMA", h, 0.7), _row(11, "EWMA", h, 0.8),
                     _row(10, "Katz", h, 0.6), _row(11, "Katz", h, 0.7),
                     _row(10, "GraphSSM", h, 0.72 + shift), _row(11, "GraphSSM", h, 0.76 + shift)]
        runs["default"][seed] = rows
    text, out = rolling.summarise(runs)
    auc = out["default"]["auc"][0]
    # the model's mean over seeds per origin: 0.73 and 0.77; minus EWMA: +0.03 and -0.03
    assert auc["best_baseline"] == "EWMA" and auc["baseline"] == pytest.approx(0.75)
    assert auc["model"] == pytest.approx(0.75)
    assert auc["difference"] == pytest.approx(0.0, abs=1e-12)
    assert auc["standard_error"] == pytest.approx(math.sqrt(2 * 0.03 ** 2) / math.sqrt(2))
    assert out["default"]["ap"][4]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert out["default"]["ece"] == pytest.approx([0.001 * h for h in range(1, 6)])
    assert "| default | auc | 0.750 (+0.000 ± 0.030)" in text


def test_merge_puts_variants_of_separate_runs_in_one_table(rolling, tmp_path, capsys):
    import json

    rows = [_row(10, name, h, value) for h in range(1, 6)
            for name, value in (("EWMA", 0.7), ("GraphSSM", 0.8))]
    first = {"command": "a", "origins": [10], "seeds": [0], "runs": {"default": {"0": rows}}}
    second = {"command": "b", "origins": [10], "seeds": [0], "runs": {"recency": {"0": rows}}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p, r in zip(paths, (first, second)):
        p.write_text(json.dumps(r))
    rolling.merge([str(p) for p in paths], str(tmp_path / "m.json"))
    merged = json.loads((tmp_path / "m.json").read_text())
    assert list(merged["runs"]) == ["default", "recency"] and merged["commands"] == ["a", "b"]
    # the baselines' rows are kept once, in the first variant's runs
    assert {r["forecaster"] for r in merged["runs"]["recency"]["0"]} == {"GraphSSM"}
    assert {r["forecaster"] for r in merged["runs"]["default"]["0"]} == {"GraphSSM", "EWMA"}
    assert merged["summary"]["recency"]["auc"][0]["difference"] == pytest.approx(0.1)
    assert "| recency | auc | 0.800 (+0.100" in capsys.readouterr().out
    second["origins"] = [11]
    paths[1].write_text(json.dumps(second))
    with pytest.raises(SystemExit, match="differ in origins or seeds"):
        rolling.merge([str(p) for p in paths], None)
