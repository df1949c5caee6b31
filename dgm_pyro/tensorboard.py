"""TensorBoard event files of a training run (``dgm-pyro train ... --log tensorboard``).

People who train 28x28 models watch them in TensorBoard. :class:`TensorBoardLogger` is a training-loop
callback (:mod:`dgm_pyro.callbacks`) that writes, after every epoch, into ``RUN/tensorboard/``:

- every column of the epoch's ``metrics.csv`` row (``train/loss``, ``valid/elbo``, ``valid/log_likelihood``,
  ``progress/beta_mean`` (the KL weight), ``progress/seconds``, ...) at the step of the epoch: the curves are
  the file's;
- the ELBO's terms on the first ``diagnostic_rows`` validation rows (seed P3.1):
  ``terms/reconstruction`` = E_q[log p(x|z,y)] (one draw of z per row) and ``terms/kl`` = KL(q(z|x,y) || p(z|y))
  (closed form), both nats per datapoint;
- the KL per latent dimension (``kl_per_dimension/zNNN``) and the active units (Burda et al. 2016:
  Cov_x E_q[z_u] > 0.01), as :func:`dgm_pyro.diagnostics.collapse_report` defines them (P3.3);
- every ``image_every`` epochs (and the last), a grid of decoder means: one row per condition (every class of
  label data, the first 8 validation conditions otherwise, with the given quadrants filled in), 8 columns.

The measures run without touching the training random state, so a run with the logger trains exactly as one
without it. It needs the ``tensorboard`` package: ``pip install -c constraints-cpu.txt -e ".[tensorboard]"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch

from . import distributed as D
from .callbacks import Callback
from .data.dataset import ConditionalDataset
from .diagnostics import active_units, encoder_traces, kl_per_dimension, site_posteriors
from .errors import DgmPyroError

__all__ = ["TensorBoardLogger", "require_tensorboard", "sample_grid_image"]

_INSTALL = "pip install -c constraints-cpu.txt -e \".[tensorboard]\" (or pip install tensorboard)"


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`DgmPyroError` that says how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise DgmPyroError(f"--log tensorboard needs the tensorboard package: {_INSTALL}") from None
    return SummaryWriter


def sample_grid_image(x: torch.Tensor, y: torch.Tensor, ds: ConditionalDataset) -> torch.Tensor:
    """One grey image (C*H, S*W) in [0, 1] tiling the samples ``x`` (C, S, x_dim) of C conditions ``y``
    (for quadrant completion the given part of each image is filled in from y)."""
    from .plotting import assemble_images

    imgs = assemble_images(x, y, ds)  # (C, S, H, W)
    c, s, h, w = imgs.shape
    return imgs.permute(0, 2, 1, 3).reshape(c * h, s * w)


class TensorBoardLogger(Callback):
    """Writes the module docstring's scalars and images after every interval (rank 0 only).

    Args:
        log_dir: folder of the event files (``None``: ``tensorboard/`` in the trainer's run folder).
        valid: the validation split (x, y) on the module's device; its first ``diagnostic_rows`` rows are measured.
        dataset: the run's dataset (image shape, condition kind) for the sample grids; ``None`` writes none.
        image_every: epochs between sample grids.
        site: the latent site of the KL and active-unit measures.
    """

    def __init__(self, log_dir: Optional[str | Path], valid: tuple[torch.Tensor, torch.Tensor],
                 dataset: Optional[ConditionalDataset] = None, image_every: int = 5, diagnostic_rows: int = 1000,
                 samples: int = 8, site: str = "z"):
        if image_every < 1:
            raise ValueError(f"image_every must be >= 1, got {image_every}")
        self.writer_class = require_tensorboard()
        self.log_dir, self.dataset, self.site = log_dir, dataset, site
        self.valid = tuple(t[:diagnostic_rows] for t in valid)
        self.image_every, self.samples = image_every, samples
        self.writer: Any = None

    def on_train_start(self, trainer: Any) -> None:
        if self.writer is None and D.rank() == 0:
            log_dir = Path(trainer.run_dir) / "tensorboard" if self.log_dir is None else Path(self.log_dir)
            # a resumed run drops the events a crashed writer left past the checkpoint
            self.writer = self.writer_class(str(log_dir), purge_step=int(trainer.state[trainer.data.unit]) + 1)

    def on_checkpoint(self, trainer: Any, row: dict[str, float]) -> None:
        unit = trainer.data.unit
        step = int(row[unit])
        for key, value in row.items():
            if key != unit and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(_tag(key), value, step)
        with torch.random.fork_rng(), torch.no_grad():
            self._diagnostics(trainer.module, step)
            last = step >= trainer.data.total or bool(trainer.state["stopped"])
            if self.dataset is not None and self.dataset.image_shape and (step % self.image_every == 0 or last):
                self._images(trainer.module, step)
        self.writer.flush()

    def on_train_end(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _diagnostics(self, module: Any, step: int) -> None:
        guide_tr, model_tr = encoder_traces(module.model, module.guide, *self.valid)
        try:
            q, p = site_posteriors(guide_tr, model_tr, site=self.site)
        except ValueError:  # no latent site of that name and shape: nothing to measure
            return
        au, _ = active_units(q, prior=p if len(p.batch_shape) == 1 else None)
        self.writer.add_scalar("diagnostics/active_units", au, step)
        try:
            kl = kl_per_dimension(q, p)
        except ValueError:  # a prior not factorised over the dimensions (a mixture): no per-dimension split
            return
        for u, value in enumerate(kl.tolist()):
            self.writer.add_scalar(f"kl_per_dimension/z{u:03d}", value, step)
        n = self.valid[0].shape[0]
        recon = sum(float(s["fn"].log_prob(s["value"]).sum()) for s in model_tr.nodes.values()
                    if s["type"] == "sample" and s["is_observed"]) / n
        self.writer.add_scalar("terms/reconstruction", recon, step)
        self.writer.add_scalar("terms/kl", float(kl.sum()), step)

    def _images(self, module: Any, step: int) -> None:
        ds = self.dataset
        if not callable(getattr(module, "sample", None)):
            return
        y = self.valid[1]
        if ds.condition == "label":
            y = torch.eye(ds.num_classes, device=y.device)
        elif ds.condition == "none":
            y = y[:1]
        else:
            y = y[:8]
        x = module.sample(y.repeat_interleave(self.samples, 0), mean=True).float().cpu()
        grid = sample_grid_image(x.reshape(y.shape[0], self.samples, -1), y.cpu(), ds)
        self.writer.add_image("samples/decoder_mean", grid, step, dataformats="HW")


def _tag(key: str) -> str:
    """A metrics.csv column as a TensorBoard tag: ``valid_elbo`` -> ``valid/elbo``, ``train_loss`` ->
    ``train/loss``; the other columns (beta, seconds, best, ...) go under ``progress/``."""
    head, _, rest = key.partition("_")
    return f"{head}/{rest}" if head in ("train", "valid") and rest else f"progress/{key}"
