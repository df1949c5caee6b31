"""SVI step time of the CVAE: dgm-pyro's Pyro model/guide against the same networks and loss by hand.

Interleaved paired runs (Pyro block, then PyTorch block, repeated); prints the median of the per-pair
time ratios. Goal: at most 1.10x on digits, 1.05x on MNIST (issue 29). Batch 100, Adam, gradient clipping in
both, the default CVAE of the dataset (MNIST: Bernoulli, a minibatch binarised once). The loss is the trainer's
default, ``meanfield`` (TraceMeanField_ELBO; the reference takes the same closed-form KL), or ``--objective elbo``
(Trace_ELBO; the reference takes one draw of log q - log p). Pyro's argument validation is off, as in
``dgm_pyro.training.Trainer`` after its first step; ``--validation`` turns it on to show its cost. As in the
Trainer, the networks are not registered with ``pyro.module`` (``param_registration(False)``: the optimiser holds
the parameters); ``--registration`` registers them, as a ``pyro.optim`` loop must, to show that cost.

    python benchmarks/svi_step.py --pairs 30 --steps 20
    python benchmarks/svi_step.py --dataset mnist --pairs 15 --steps 10 --threads 1
    python benchmarks/svi_step.py --dataset mnist --pairs 15 --steps 10 --threads 1 --hidden 500,500 --latent-dim 200
    python benchmarks/svi_step.py --dataset mnist --pairs 10 --steps 5 --threads 1 --arch conv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _reference import TorchCVAE  # noqa: E402

from dgm_pyro.models import param_registration  # noqa: E402
from dgm_pyro.runs import TrainConfig  # noqa: E402
from dgm_pyro.data import load_dataset  # noqa: E402
from dgm_pyro.runs import build_model  # noqa: E402
from dgm_pyro.training import build_objective  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="digits or mnist (any dataset of train cvae)")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--validation", action="store_true", help="keep Pyro's argument validation on")
    ap.add_argument("--registration", action="store_true", help="register the networks with pyro.module each step")
    ap.add_argument("--objective", choices=["meanfield", "elbo"], default="meanfield")
    ap.add_argument("--hidden", default=None, help="hidden widths, comma-separated (default: the dataset's default "
                    "CVAE); for example 500,500 for the networks of Pyro's MNIST tutorial")
    ap.add_argument("--latent-dim", type=int, default=None, help="latent dimension (default: the default CVAE's)")
    ap.add_argument("--arch", choices=["mlp", "conv"], default="mlp", help="the CVAE's encoder and decoder")
    args = ap.parse_args()
    pyro.enable_validation(args.validation)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    sizes = {} if args.hidden is None else {"hidden_dims": [int(w) for w in args.hidden.split(",")]}
    if args.latent_dim is not None:
        sizes["latent_dim"] = args.latent_dim
    if args.arch != "mlp":
        sizes["arch"] = args.arch
    cfg = TrainConfig(dataset=args.dataset, **sizes).validate()
    ds = load_dataset(cfg.dataset, likelihood=cfg.likelihood)
    x, y = ds.splits["train"]
    if ds.likelihood == "bernoulli":  # the step of a binarised minibatch (training re-draws it each time)
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    cvae = build_model(cfg, ds)
    ref = TorchCVAE(cvae)
    elbo = build_objective(args.objective)
    ref_loss = ref.meanfield_loss if args.objective == "meanfield" else ref.loss
    with torch.no_grad(), param_registration(False):  # the two losses agree on the same draws, or no timing
        pyro.set_rng_seed(1)
        mine = elbo.differentiable_loss(cvae.model, cvae.guide, x[:10], y[:10])
        pyro.set_rng_seed(1)
        theirs = ref_loss(x[:10], y[:10])
    if not torch.allclose(mine, theirs, rtol=1e-5):
        raise SystemExit(f"the reference's loss {theirs.item()} differs from dgm-pyro's {mine.item()}")
    opt_p = torch.optim.Adam(cvae.parameters(), lr=1e-3)
    opt_t = torch.optim.Adam(ref.parameters(), lr=1e-3)
    batches = [torch.randint(0, x.shape[0], (args.batch_size,)) for _ in range(args.steps)]

    def pyro_block():
        for idx in batches:
            opt_p.zero_grad()
            with param_registration(args.registration):
                loss = elbo.differentiable_loss(cvae.model, cvae.guide, x[idx], y[idx]) / len(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(cvae.parameters(), 10.0)
            opt_p.step()

    def torch_block():
        for idx in batches:
            opt_t.zero_grad()
            loss = ref_loss(x[idx], y[idx]) / len(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 10.0)
            opt_t.step()

    pyro_block(), torch_block()  # warm-up
    ratios, tp, tt = [], [], []
    for _ in range(args.pairs):
        t0 = time.perf_counter()
        pyro_block()
        t1 = time.perf_counter()
        torch_block()
        t2 = time.perf_counter()
        tp.append((t1 - t0) / args.steps)
        tt.append((t2 - t1) / args.steps)
        ratios.append(tp[-1] / tt[-1])
    q = statistics.quantiles(ratios, n=4)
    print(f"{args.dataset}: x_dim {ds.x_dim}, arch {args.arch}, hidden {cfg.hidden_dims}, latent {cfg.latent_dim}, "
          f"{ds.likelihood}")
    print(f"objective={args.objective} threads={args.threads} batch={args.batch_size} pairs={args.pairs} steps/pair={args.steps} "
          f"pyro validation={'on' if args.validation else 'off'} "
          f"registration={'on' if args.registration else 'off'}")
    extra = statistics.median(a - b for a, b in zip(tp, tt))
    print(f"median step: dgm-pyro {1e3 * statistics.median(tp):.2f} ms, plain PyTorch "
          f"{1e3 * statistics.median(tt):.2f} ms; Pyro's extra time {1e3 * extra:.2f} ms (median over pairs)")
    print(f"ratio dgm-pyro / PyTorch: median {statistics.median(ratios):.3f} (IQR {q[0]:.3f}-{q[2]:.3f}); goal <= "
          f"{1.05 if args.dataset.startswith('mnist') else 1.10:.2f}")


if __name__ == "__main__":
    main()
