"""Seconds per training step of the CVAE with the gated PixelCNN decoder on binarised MNIST (issue 30), for a few
widths, depths and conditionings: what a collapse table at this size costs on a CPU.

    OMP_NUM_THREADS=1 python benchmarks/pixelcnn_step.py            # alone: pause other jobs first

One step = the mean-field ELBO of a minibatch of 100 images (latent 32), its gradient and an Adam update; the
median of ``--steps`` steps after one warm-up step, and the minutes of an epoch of 500 such steps. A config is
CHANNELSxLAYERS, with a trailing ``s`` for ``--pixelcnn-conditioning spatial`` (z as a map over the image).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import pyro
import torch

from dgm_pyro.data import load_dataset
from dgm_pyro.infer.meanfield import MeanFieldELBO
from dgm_pyro.runs import TrainConfig, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["16x5", "16x5s", "16x1", "16x1s", "32x5", "16x3"],
                    help="CHANNELSxLAYERS, s at the end: spatial conditioning")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    ds = load_dataset("mnist-unconditional")
    x, y = ds.splits["train"]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.bernoulli(x[:100 * (args.steps + 1)], generator=gen), y[:100 * (args.steps + 1)]
    print("| feature maps | layers | conditioning | seconds per step | minutes per epoch (500 steps) |")
    print("|---|---|---|---|---|")
    for spec in args.configs:
        match = re.fullmatch(r"(\d+)x(\d+)(s?)", spec)
        if match is None:
            raise SystemExit(f"config '{spec}': expected CHANNELSxLAYERS, optionally ending in s (spatial)")
        channels, layers = int(match[1]), int(match[2])
        conditioning = "spatial" if match[3] else "global"
        pyro.set_rng_seed(0)
        cfg = TrainConfig(dataset="mnist-unconditional", decoder="pixelcnn", pixelcnn_channels=channels,
                          pixelcnn_layers=layers, pixelcnn_conditioning=conditioning, latent_dim=32).validate()
        model = build_model(cfg, ds)
        opt, elbo = torch.optim.Adam(model.parameters(), 1e-3), MeanFieldELBO()
        times = []
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            elbo.differentiable_loss(model.model, model.guide, x[100 * i:100 * (i + 1)], y[100 * i:100 * (i + 1)]).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step = statistics.median(times[1:])
        print(f"| {channels} | {layers} | {conditioning} | {step:.2f} | {step * 500 / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
