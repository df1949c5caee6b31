"""D_CS(p || q) against KL(p || q) and KL(q || p) over a grid of Gaussian pairs (seed P2.1).

p = N(0, 1), q = N(mu, sigma^2) for mu in [0, 4] and several sigma; writes the plot and prints how the
three compare over the grid (D_CS <= min(KL(p||q), KL(q||p)) everywhere for Gaussians).

    python benchmarks/cs_vs_kl.py --out docs/cs_vs_kl.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal  # noqa: E402

from dgm_pyro.divergences import cs_divergence, kl_divergence  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/cs_vs_kl.png"))
    args = ap.parse_args()
    mu = torch.linspace(0, 4, 201, dtype=torch.float64)
    sigmas = [0.25, 0.5, 1.0, 2.0, 4.0]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.2 * len(sigmas), 3.2), sharey=True)
    worst = 0.0
    for ax, sigma in zip(axes, sigmas):
        p, q = Normal(torch.zeros_like(mu), 1.0), Normal(mu, sigma)
        cs, kl_pq, kl_qp = cs_divergence(p, q), kl_divergence(p, q), kl_divergence(q, p)
        worst = max(worst, float((cs / torch.minimum(kl_pq, kl_qp).clamp_min(1e-300))[1:].max()))
        ax.plot(mu, kl_pq, label="KL(p||q)")
        ax.plot(mu, kl_qp, label="KL(q||p)", linestyle="--")
        ax.plot(mu, cs, label="D_CS(p||q)", linewidth=2.5, color="k")
        ax.set_title(f"q = N(mu, {sigma:g}^2)")
        ax.set_xlabel("mu")
        ax.set_ylim(0, 10)
    axes[0].set_ylabel("nats (p = N(0, 1))")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}; over the grid max D_CS / min(KL(p||q), KL(q||p)) = {worst:.3f} (<= 1 for Gaussians, P2.1)")


if __name__ == "__main__":
    main()
