"""The conditional VAE in run folders (``dgm-pyro train cvae``): its configuration, how it is built,
trained (with the NN baseline for quadrant completion, collapse tracking and aggressive training) and
sampled from (seed P1.8)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import pyro
import torch

from ..callbacks import AggressiveTraining
from ..config import field_default, option
from ..data import ConditionalDataset
from ..device import to_device
from ..errors import DgmPyroError
from ..models import CVAE, BaselineGuess, NNBaseline
from ..models.cvae import ARCHITECTURES, DECODERS, PRIORS
from ..models.nn import ACTIVATIONS
from ..models.pixelcnn import CONDITIONINGS
from ..models.text import (POOLINGS, TEXT_ENCODERS, HashedNgramEncoder, MiniLMEncoder, check_captions, featurize,
                           vocabulary)
from ..registry import register_model
from .base import load_weights, run_data, unfinished_training
from .dataset_models import DatasetConfig, DatasetModelKind, DatasetRun

__all__ = ["CVAEConfig", "TrainConfig", "CVAEKind", "build_model", "build_baseline", "generate", "text_conditions",
           "prompt_conditions", "default_prompts"]

log = logging.getLogger("dgm_pyro.runs")


@dataclass
class CVAEConfig(DatasetConfig):
    """Everything that determines a CVAE run; written resolved to ``config.json`` in the run folder.

    The defaults train the CVAE on class-conditional digits in about a minute on 2 CPU cores.
    """

    model: str = option("cvae", "registered model name", cli=False)
    prior: str = option("learned", "Conditional prior network p(z|y) or N(0, I).", choices=PRIORS)
    latent_dim: int = option(8, "Dimension of z.", min=1)
    hidden_dims: list[int] = option([256, 256], "Hidden widths of each network, comma-separated.", flag="--hidden",
                                    min=1)
    activation: str = option("relu", "Nonlinearity of the MLPs: relu, or tanh (Burda et al. 2016's IWAE networks: "
                             "--hidden 200,200 --latent-dim 50 --activation tanh).", choices=tuple(ACTIVATIONS),
                             added=True)
    baseline: bool = option(True, "Also train the NN baseline p(x|y) for quadrant-completion data.")
    baseline_guess: bool = option(False, "Feed the NN baseline's guess E[x|y] to the CVAE beside y (Sohn et al. 2015, "
                                  "Pyro's CVAE tutorial): the baseline trains first, then stays frozen; quadrant "
                                  "data.", added=True)
    decoder: str = option("mlp", "Pixels independent given z (mlp), a masked autoregressive network over the pixels "
                          "(autoregressive), or a gated PixelCNN over the image (pixelcnn, image data): the last two "
                          "are strong enough to ignore z.", choices=DECODERS)
    arch: str = option("mlp", "Encoder and decoder networks: mlp, or conv (convolutional over x as an image: two "
                       "stride-2 convolutions of 32 and 64 maps and one hidden layer of the last --hidden width; "
                       "image data whose x is the whole image, sides multiples of 4, such as mnist). Measured in "
                       "docs/mnist.md.", choices=ARCHITECTURES, added=True)
    decoder_dropout: float = option(0.0, "Zero each autoregressive input pixel with this probability in training "
                                    "(weakens the decoder).", min=0, max=1, max_open=True, metavar="RATE")
    pixelcnn_layers: int = option(5, "Gated layers of the pixelcnn decoder: it sees this many rows plus one above "
                                  "each pixel (fewer restrict it).", min=1, added=True)
    pixelcnn_channels: int = option(16, "Feature maps of the pixelcnn decoder's stacks (sized for CPUs; 32 costs "
                                    "2.5 times as much).", min=1, added=True)
    pixelcnn_conditioning: str = option("global", "How z and y enter the pixelcnn decoder's layers: global (a "
                                        "per-channel bias) or spatial (a map over the image, PixelVAE's way; what "
                                        "few --pixelcnn-layers need to use z; image sides multiples of 4).",
                                        choices=CONDITIONINGS, added=True)
    decoder_z: bool = option(True, "The decoder reads z; --no-decoder-z: an autoregressive decoder of x given y "
                             "alone, the reference of a collapse table.", added=True)
    aggressive: bool = option(False, "Aggressive inference-network training (He et al. 2019).")
    track_collapse: bool = option(False, "Record validation KL, mutual information and active units per epoch in "
                                  "metrics.csv.")
    text_encoder: str = option("builtin", "Text encoder of a captioned dataset (digits-text, npz: with 'text'): "
                               "builtin (hashed word and character n-grams, trained with the model) or minilm "
                               "(pretrained all-MiniLM-L6-v2, frozen; needs the [text] extra).", choices=TEXT_ENCODERS,
                               added=True)
    text_dim: int = option(64, "Embedding size of the builtin text encoder.", min=1, added=True)
    text_dropout: float = option(0.25, "Probability of dropping each caption feature in training (builtin text "
                                 "encoder; measured in docs/text.md).", min=0, max=1, max_open=True, metavar="RATE", added=True)
    text_pooling: str = option("sum", "How the builtin text encoder pools a caption's words: sum (measured better, "
                               "docs/text.md) or mean.", choices=POOLINGS, added=True)

    def validate(self) -> "CVAEConfig":
        super().validate()
        self.require([
            (len(self.hidden_dims) >= 1, "hidden_dims must hold at least one width"),
            (self.decoder_dropout == 0 or self.decoder in ("autoregressive", "pixelcnn"),
             "decoder_dropout needs decoder 'autoregressive' or 'pixelcnn'"),
            (self.decoder == "pixelcnn" or (self.pixelcnn_layers, self.pixelcnn_channels,
                                            self.pixelcnn_conditioning) == (5, 16, "global"),
             "pixelcnn_layers, pixelcnn_channels and pixelcnn_conditioning need decoder 'pixelcnn'"),
            (self.decoder_z or self.decoder in ("autoregressive", "pixelcnn"),
             "--no-decoder-z needs decoder 'autoregressive' or 'pixelcnn'"),
            (not self.baseline_guess or self.baseline, "baseline_guess needs the NN baseline (drop --no-baseline)"),
        ])
        return self


#: the name used before model kinds had their own configurations
TrainConfig = CVAEConfig


def _x_standardisation(ds: ConditionalDataset) -> tuple[Any, Any]:
    if ds.likelihood == "categorical":
        return 0.0, float(ds.levels - 1)
    if ds.likelihood == "gaussian":
        x = ds.splits["train"][0]
        return x.mean(0), x.std(0).clamp_min(1e-6)
    return 0.0, 1.0


def text_conditions(config: CVAEConfig, ds: ConditionalDataset) -> ConditionalDataset:
    """A captioned dataset (``condition == "text"``, captions in ``extra["texts"]``) with its captions turned
    into the conditions y the configured text encoder reads: hashed feature ids and weights (N, 2L) for
    ``builtin`` (L the most features of any caption; the vocabulary is the training captions'), frozen
    embeddings (N, 384) for ``minilm``. Other datasets are returned as
    they are."""
    if ds.condition != "text":
        return ds
    texts = ds.extra["texts"]
    if config.text_encoder == "minilm":
        encoder = MiniLMEncoder()
        ys = {s: encoder.encode(texts[s]) for s in ds.splits}
        ds.extra["text_encoder"] = {"name": encoder.name, "version": encoder.version}
    else:
        vocab = vocabulary(texts["train"])
        width = max(featurize(texts[s], vocab).shape[1] // 2 for s in ds.splits)
        ys = {s: featurize(texts[s], vocab, width=width) for s in ds.splits}
        ds.extra["text_encoder"] = {"name": HashedNgramEncoder.name, "version": HashedNgramEncoder.version}
    ds.splits = {s: (x, ys[s]) for s, (x, _) in ds.splits.items()}
    return ds


def build_model(config: CVAEConfig, ds: ConditionalDataset) -> CVAE:
    """The CVAE a configuration describes, sized for the dataset. For captioned data with the builtin text
    encoder, the encoder is the CVAE's condition network, its vocabulary the training captions'."""
    shift, scale = _x_standardisation(ds)
    conv, pixelcnn = config.arch == "conv", config.decoder == "pixelcnn"
    spatial = pixelcnn and config.pixelcnn_conditioning == "spatial"
    for wanted, what, multiple in ((conv, "--arch conv", 4), (pixelcnn, "--decoder pixelcnn", 1),
                                   (spatial, "--pixelcnn-conditioning spatial", 4)):
        whole = ds.condition != "quadrant" and ds.image_shape and len(ds.image_shape) == 2
        if wanted and not (whole and all(side % multiple == 0 for side in ds.image_shape)):
            sides = ", with sides multiples of 4" if multiple > 1 else ""
            raise DgmPyroError(f"{what} needs images whose x is the whole image{sides} (mnist, mnist-text, "
                               f"mnist-unconditional, digits); dataset '{ds.name}' has "
                               + ("quadrant targets" if ds.condition == "quadrant" else f"image shape {ds.image_shape}"))
    if conv and config.decoder != "mlp":
        raise DgmPyroError(f"--arch conv has its own decoder: --decoder {config.decoder} does not combine with it")
    if config.decoder in ("autoregressive", "pixelcnn") and ds.likelihood not in ("categorical", "bernoulli"):
        raise DgmPyroError(f"the {config.decoder} decoder needs categorical or binary data; dataset '{ds.name}' is "
                           f"{ds.likelihood}")
    y_dim, condition_net = ds.y_dim, None
    if config.baseline_guess:
        if ds.condition != "quadrant":
            raise DgmPyroError(f"--baseline-guess feeds the NN baseline of quadrant completion to the CVAE; dataset "
                               f"'{ds.name}' has condition '{ds.condition}'")
        condition_net = BaselineGuess(build_baseline(config, ds))
        y_dim = condition_net.dim
    if ds.condition == "text" and config.text_encoder == "builtin":
        condition_net = HashedNgramEncoder(config.text_dim, dropout=config.text_dropout, pooling=config.text_pooling)
        condition_net.fit_vocabulary(ds.extra["texts"]["train"])
        y_dim = condition_net.dim
    return CVAE(ds.x_dim, y_dim, latent_dim=config.latent_dim, hidden_dims=config.hidden_dims,
                likelihood=ds.likelihood, levels=ds.levels, prior=config.prior, x_shift=shift, x_scale=scale,
                decoder=config.decoder, decoder_dropout=config.decoder_dropout, condition_net=condition_net,
                activation=config.activation, arch=config.arch,
                image_shape=ds.image_shape if conv or pixelcnn else None,
                pixelcnn_layers=config.pixelcnn_layers, pixelcnn_channels=config.pixelcnn_channels,
                decoder_reads_z=config.decoder_z, pixelcnn_conditioning=config.pixelcnn_conditioning)


def build_baseline(config: CVAEConfig, ds: ConditionalDataset) -> NNBaseline:
    """The deterministic NN baseline p(x|y) of quadrant completion, with the CVAE's widths."""
    shift, scale = _x_standardisation(ds)
    return NNBaseline(ds.x_dim, ds.y_dim, hidden_dims=config.hidden_dims, likelihood=ds.likelihood, levels=ds.levels,
                      x_shift=shift, x_scale=scale)


@register_model
class CVAEKind(DatasetModelKind):
    """Conditional VAE with a learned conditional prior (seed P1), its collapse remedies (P3) and, for
    quadrant completion, the NN baseline trained alongside into ``baseline/``."""

    name: ClassVar[str] = "cvae"
    config_class: ClassVar[type] = CVAEConfig
    description: ClassVar[str] = "conditional VAE on (x, y) data: digits, quadrants, linear-Gaussian, npz:, idx:"
    commands: ClassVar[tuple[str, ...]] = ("evaluate", "sample", "diagnose")

    def load_data(self, config: CVAEConfig) -> ConditionalDataset:
        return text_conditions(config, super().load_data(config))

    def check(self, config: CVAEConfig, data: ConditionalDataset) -> None:
        changed = [f.name for f in dataclasses.fields(config)
                   if f.name.startswith("text_") and getattr(config, f.name) != field_default(f)]
        if data.condition != "text" and changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise DgmPyroError(f"{flags} apply to captioned data (digits-text, npz: with a 'text' array); dataset "
                               f"'{data.name}' has condition '{data.condition}'")
        super().check(config, data)

    def data_summary(self, data: ConditionalDataset) -> dict[str, Any]:
        summary = super().data_summary(data)
        if data.condition == "text":
            summary["text_encoder"] = data.extra["text_encoder"]
        return summary

    def build(self, config: CVAEConfig, data: ConditionalDataset) -> CVAE:
        return build_model(config, data)

    def wants_baseline(self, config: CVAEConfig, data: ConditionalDataset) -> bool:
        return config.baseline and data.condition == "quadrant"

    def unfinished(self, config: CVAEConfig, run_dir: Path) -> list[str]:
        parts = super().unfinished(config, run_dir)
        if config.baseline and run_data(run_dir).get("condition") == "quadrant":
            part = unfinished_training(Path(run_dir) / "baseline", config, "the NN baseline")
            parts += [part] if part else []
        return parts

    def chunk_elements(self, config: CVAEConfig) -> int:
        # a gated PixelCNN layer holds 4 x channels values per pixel (the gates of its two stacks): bound those.
        # 10 particles of 1,000 MNIST images in chunks of 8,000 images: 63 s and 6.4 GB; of 100: 17 s and 0.8 GB
        if config.decoder == "pixelcnn":
            return super().chunk_elements(config) // (4 * config.pixelcnn_channels)
        return super().chunk_elements(config)

    def callbacks(self, config: CVAEConfig, data: ConditionalDataset, device: torch.device,
                  track_collapse: bool = False) -> list[Any]:
        track = track_collapse or config.track_collapse or config.aggressive
        callbacks = super().callbacks(config, data, device, track_collapse=track)
        return callbacks + [AggressiveTraining(enabled=config.aggressive)] if track else callbacks

    def train(self, config: CVAEConfig, data: ConditionalDataset, module: torch.nn.Module, run_dir: Path,
              resume: bool, progress: bool, callbacks: list[Any], device: torch.device) -> dict[str, Any]:
        if config.baseline_guess:  # the CVAE reads the trained baseline's guess: the baseline goes first
            base_summary = self._train_baseline(config, data, run_dir, resume, progress, device)
            load_weights(module.condition_net.baseline, run_dir / "baseline" / self.checkpoint)
            summary = super().train(config, data, module, run_dir, resume, progress, callbacks, device)
            summary["baseline"] = base_summary
            return summary
        summary = super().train(config, data, module, run_dir, resume, progress, callbacks, device)
        if self.wants_baseline(config, data):
            summary["baseline"] = self._train_baseline(config, data, run_dir, resume, progress, device)
        return summary

    def _train_baseline(self, config: CVAEConfig, data: ConditionalDataset, run_dir: Path, resume: bool,
                        progress: bool, device: torch.device) -> dict[str, Any]:
        """Train the NN baseline p(x|y) into ``run_dir/baseline`` (from weights drawn after reseeding)."""
        base_dir = run_dir / "baseline"
        log.info("training the NN baseline p(x|y) into %s", base_dir)
        pyro.set_rng_seed(config.seed)
        baseline = build_baseline(config, data).to(device)
        # the baseline has no latent variable: the objective and annealing options do not apply to it
        base_config = dataclasses.replace(config, objective="elbo", lam=1.0, free_bits=0.0, anneal="none",
                                          aggressive=False, track_collapse=False, kl_samples=0)
        trainer = self.trainer(base_config, baseline, to_device(device, *data.splits["train"]), base_dir,
                               self.callbacks(base_config, data, device), progress, label="baseline",
                               binarize=data.binarized_columns())
        return trainer.fit(resume=resume and (base_dir / "checkpoint.pt").is_file())

    def make_run(self, path: Path, config: CVAEConfig, data: ConditionalDataset, module: torch.nn.Module,
                 device: torch.device) -> DatasetRun:
        run = super().make_run(path, config, data, module, device)
        recorded = run_data(path).get("text_encoder")
        if data.condition == "text" and recorded and recorded != data.extra["text_encoder"]:
            log.warning("%s was trained with the text encoder %s %s; this installation has %s %s", path,
                        recorded.get("name"), recorded.get("version"), data.extra["text_encoder"]["name"],
                        data.extra["text_encoder"]["version"])
        if self.wants_baseline(config, data) and (path / "baseline" / self.checkpoint).is_file():
            run.baseline = build_baseline(config, data)
            load_weights(run.baseline, path / "baseline" / self.checkpoint)
            run.baseline = run.baseline.to(device).eval()
        return run

    def sample(self, run: DatasetRun, label: Optional[int] = None, condition: Optional[torch.Tensor] = None,
               num: int = 8, mean: bool = True, seed: int = 0, texts: Optional[list[str]] = None,
               **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate ``num`` samples per condition (seed P1.8); see :func:`generate`. A text-conditioned run (or
        ``texts``) is sampled from prompts; anything else as every dataset model is."""
        ds = run.dataset
        if ds.condition != "text" and texts is None:
            return super().sample(run, label=label, condition=condition, num=num, mean=mean, seed=seed, **options)
        if label is not None or condition is not None:
            raise DgmPyroError(f"{run.path}: a text-conditioned run is sampled from prompts (--text, --text-file), "
                               "not from a label or condition file" if ds.condition == "text" else
                               "give prompts or a label or a condition, not several")
        y = prompt_conditions(run, default_prompts(ds) if texts is None else texts)
        return self.draw_per_condition(run, y, num, mean, seed, **options)


def default_prompts(ds: ConditionalDataset) -> list[str]:
    """The prompts a text-conditioned run is sampled from when none are given: the first 8 test captions."""
    return ds.extra["texts"]["test"][:8]


def prompt_conditions(run: DatasetRun, texts: list[str]) -> torch.Tensor:
    """The conditions y of text prompts for a text-conditioned run (what its model takes).

    With the builtin encoder, a prompt none of whose words occurs in a training caption is refused, and
    the unknown words of the others are named in a warning, saying whether they are ignored or read
    through the character n-grams they share with known words."""
    ds = run.dataset
    if ds.condition != "text":
        raise DgmPyroError(f"{run.path}: not a text-conditioned run (dataset '{ds.name}', condition "
                           f"'{ds.condition}'); prompts need a run trained on captions (digits-text, npz: with 'text')")
    texts = check_captions(texts, "prompt")
    net = run.module.condition_net
    if not isinstance(net, HashedNgramEncoder):
        return MiniLMEncoder().encode(texts)
    y = net.featurize(texts)
    for t, row in zip(texts, y):
        unknown = net.unknown_words(t)
        if not bool(row[row.shape[0] // 2:].any()):
            vocab = sorted(net.vocabulary["words"])
            raise DgmPyroError(f"prompt {t!r}: none of its words occurs in the training captions (known words: "
                               f"{', '.join(vocab[:20])}{', ...' if len(vocab) > 20 else ''})")
        for read, what in ((False, "ignored"), (True, "read through the character n-grams shared with known words")):
            words = [repr(w) for w, r in unknown.items() if r == read]
            if words:
                log.warning("prompt %r: %s %s in no training caption: %s", t, ", ".join(words),
                            "is" if len(words) == 1 else "are", what)
    return y


def generate(run: DatasetRun, label: Optional[int] = None, condition: Optional[torch.Tensor] = None, num: int = 8,
             mean: bool = True, seed: int = 0, texts: Optional[list[str]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num`` samples per condition from the conditional prior p(z|y) (seed P1.8).

    For label-conditioned data, ``label=None`` gives ``num`` samples of every class. For quadrant
    completion, ``condition`` holds given quadrants (N, y_dim) in [0, 1]; ``None`` uses the first test
    images. For text-conditioned data, ``texts`` are the prompts (:func:`prompt_conditions`; ``None``: the
    first 8 test captions). Returns ``(x, y)`` on the CPU with ``x`` of shape (C, num, x_dim) for C
    conditions and ``y`` the conditions the model took.
    """
    return run.kind.sample(run, label=label, condition=condition, num=num, mean=mean, seed=seed, texts=texts)
