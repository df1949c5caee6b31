"""Pyro's own NN baseline recipe for MNIST quadrant completion, re-run today: is its published 100.4 / 61.9 / 25.4
reproducible (issue 29)?

The recipe of Pyro's ``examples/cvae`` (re-written here from its description, no Pyro code): a 784-500-500-784
ReLU MLP with sigmoid outputs; the input image has its hidden pixels set to -1, the target its given pixels set to
-1, and the loss is the grey-level binary cross-entropy summed over the hidden pixels only; torchvision's MNIST
(pixels value/255, the 60,000 training images); batches of 128, Adam 1e-3, at most ``--epochs`` epochs, early
stopping with patience 3 on the test set (Pyro's "val" split is MNIST's test set) keeping the best weights. The
score is Pyro's ``generate_table``: the mean over test batches of 32 of the per-image loss of each batch.

``--input given`` is the ablation: the network reads the given pixels only (no -1 placeholders), as dgm-pyro's
NN baseline does; everything else is the same recipe.

Beside it, on the same network and data, the score in our table's convention (pixels value/256 as in the pinned
wheel, the mean over the 10,000 images) and the entropy floor of the targets (the loss of a perfect predictor of the
grey levels), which depends on the pixel scale.

    python benchmarks/pyro_nn_baseline.py --seeds 0 1 2 --out /work/pyro_baseline \\
        --json docs/results/pyro_nn_baseline.json
    python benchmarks/pyro_nn_baseline.py --seeds 0 1 2 --quadrants 1 --input given \\
        --out /work/pyro_baseline_given --json docs/results/pyro_nn_baseline_given.json

Each (quadrants, seed) is written to ``OUT/q{N}-s{S}.json`` when done and skipped on the next call (resumable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dgm_pyro.data.mnist import mnist_arrays

#: Pyro's CVAE tutorial, NN baseline, nats per test image at 1 / 2 / 3 given quadrants.
PUBLISHED = {1: 100.4, 2: 61.9, 3: 25.4}


def masks(quadrants: int) -> torch.Tensor:
    """(784,) bool, True where the pixel is given (the network's input), in Pyro's tutorial layout."""
    given = torch.zeros(28, 28, dtype=torch.bool)
    given[14:, :14] = True                      # 1: bottom-left
    if quadrants >= 2:
        given[:, :14] = True                    # 2: the left half
    if quadrants == 3:
        given[:14, :] = True                    # 3: all but bottom-right
    return given.reshape(-1)


def net(in_features: int = 784) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 500), nn.ReLU(), nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 784))


def per_image_loss(model: nn.Module, x: torch.Tensor, given: torch.Tensor, inputs: str) -> torch.Tensor:
    """(N,) grey-level cross-entropy of the hidden pixels (Pyro's masked BCE; logits for stability); the network
    reads Pyro's image with the hidden pixels set to -1 (``inputs`` "minus-one") or the given pixels only."""
    inp = torch.where(given, x, torch.full_like(x, -1.0)) if inputs == "minus-one" else x[:, given]
    bce = F.binary_cross_entropy_with_logits(model(inp), x, reduction="none")
    return (bce * (~given)).sum(-1)


def entropy_floor(x: torch.Tensor, given: torch.Tensor) -> float:
    p = x[:, ~given].double()
    return float(-(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).sum(-1).mean())


def train_one(quadrants: int, seed: int, epochs: int, data: dict, inputs: str) -> dict:
    torch.manual_seed(seed)
    given = masks(quadrants)
    model = net(784 if inputs == "minus-one" else int(given.sum()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train, x_test = data["train255"], data["test255"]
    best, best_state, bad, history, t0 = float("inf"), None, 0, [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(x_train.shape[0]).split(128):
            opt.zero_grad()
            per_image_loss(model, x_train[idx], given, inputs).mean().backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(torch.cat([per_image_loss(model, b, given, inputs) for b in x_test.split(1000)]).mean())
        history.append(val)
        if val < best:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= 3:
                break
    model.load_state_dict(best_state)
    with torch.no_grad():
        batch_means = [float(per_image_loss(model, b, given, inputs).mean()) for b in x_test.split(32)]
        ours = float(torch.cat([per_image_loss(model, b, given, inputs) for b in data["test256"].split(1000)]).mean())
    return {"quadrants": quadrants, "seed": seed, "input": inputs, "epochs_run": len(history),
            "best_epoch": history.index(best) + 1,
            "pyro_score": statistics.fmean(batch_means), "per_image_mean_255": best,
            "per_image_mean_256": ours, "test_loss_per_epoch": history,
            "entropy_floor_255": entropy_floor(x_test, given),
            "entropy_floor_256": entropy_floor(data["test256"], given),
            "published": PUBLISHED[quadrants], "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=50, help="at most this many epochs (Pyro's tutorial: 50)")
    ap.add_argument("--input", choices=["minus-one", "given"], default="minus-one",
                    help="Pyro's 784 inputs with -1 for hidden pixels, or the given pixels only (the ablation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="folder of the per-run JSON files (resumable)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arrays = mnist_arrays()
    levels = {k: torch.round(v[0] * 256) for k, v in arrays.items()}  # the wheel stores value/256
    data = {"train255": torch.cat([levels["train"], levels["valid"]]) / 255, "test255": levels["test"] / 255,
            "test256": arrays["test"][0]}
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for q in args.quadrants:
        for seed in args.seeds:
            path = args.out / f"q{q}-s{seed}.json"
            if not path.exists():
                result = train_one(q, seed, args.epochs, data, args.input)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(result, indent=1))
                tmp.replace(path)
            runs.append(json.loads(path.read_text()))
            r = runs[-1]
            print(f"q{q} seed {seed}: Pyro's score {r['pyro_score']:.2f} (published {r['published']}), ours "
                  f"{r['per_image_mean_256']:.2f}; stopped after {r['epochs_run']} epochs (best {r['best_epoch']}), "
                  f"{r['seconds']:.0f} s", flush=True)
    summary = {}
    for q in args.quadrants:
        rs = [r for r in runs if r["quadrants"] == q]
        pick = {k: [r[k] for r in rs] for k in ("pyro_score", "per_image_mean_256", "entropy_floor_255",
                                                 "entropy_floor_256", "best_epoch")}
        summary[str(q)] = {k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
                           for k, v in pick.items()} | {"published": PUBLISHED[q], "seeds": [r["seed"] for r in rs]}
        s = summary[str(q)]
        print(f"{q} quadrant(s): Pyro's recipe {s['pyro_score']['mean']:.1f} ± {s['pyro_score']['sd']:.1f} "
              f"(published {PUBLISHED[q]}); scored with value/256 targets {s['per_image_mean_256']['mean']:.1f}; "
              f"entropy floor {s['entropy_floor_255']['mean']:.1f} (/255) vs {s['entropy_floor_256']['mean']:.1f} "
              f"(/256)")
    if args.json:
        command = (f"python benchmarks/pyro_nn_baseline.py --seeds {' '.join(map(str, args.seeds))} --quadrants "
                   f"{' '.join(map(str, args.quadrants))} --input {args.input}")
        args.json.write_text(json.dumps({"command": command, "summary": summary, "runs": runs},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
