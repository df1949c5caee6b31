"""Generation from a text description (seed P1.8) on digits-text or mnist-text, beside the label-conditioned CVAE.

For each seed, trains the label-conditioned CVAE on ``digits`` (``--dataset mnist``: on ``mnist``) and the
text-conditioned CVAE on ``digits-text`` (``mnist-text``) with each text encoder (and, with ``--standard-prior``, the builtin one with the N(0, I)
prior of P1.8's second variant; with ``--dropout P`` and ``--mean-pooling``, the builtin one with feature
dropout P or mean pooling), then measures on the held-out phrasings:

- digit faithfulness: share of generated images (decoder mean and draws) an independent logistic
  regression (MNIST: a perceptron) trained on the training split reads as the digit the prompt names (:func:`dgm_pyro.faithfulness.digit_faithfulness`);
- attributes: share of one-attribute prompt pairs whose generated images move the right way
  (:func:`dgm_pyro.faithfulness.attribute_pairs`);
- evidence: test log p(x|text) (K particles, the default evaluation) against log p(x|label) on the same test
  images (447 digits, 10,000 MNIST images), with the share of PSIS k-hat > 0.7. A run folder of ``--root`` that
  holds a finished run is reused, and so is its ``evaluation.json`` when it has the same particles and seed.

    python benchmarks/text_conditioning.py --seeds 0 1 2 --encoders builtin minilm --standard-prior \
        --dropout 0 --mean-pooling --json docs/results/text_conditioning.json
    python benchmarks/text_conditioning.py --dataset mnist --seeds 0 --encoders builtin --root /work/mnist_text \
        --json docs/results/text_conditioning_mnist.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dgm_pyro.checkpoint import write_json
from dgm_pyro.data import load_dataset
from dgm_pyro.device import set_threads
from dgm_pyro.faithfulness import attribute_pairs, digit_classifier, digit_faithfulness, prompt_digit
from dgm_pyro.runs import CVAEConfig, load_run, train_run
from dgm_pyro.runs.cvae import generate


def _generator(run, num: int, seed: int, mean: bool):
    if run.dataset.condition == "text":
        return lambda prompts: generate(run, texts=prompts, num=num, mean=mean, seed=seed)[0]

    def by_label(prompts: list[str]) -> torch.Tensor:
        y = torch.nn.functional.one_hot(torch.tensor([prompt_digit(p) for p in prompts]), 10).float()
        return generate(run, condition=y, num=num, mean=mean, seed=seed)[0]
    return by_label


def _evaluation(run, particles: int, seed: int) -> dict:
    path = run.path / "evaluation.json"
    if path.exists():
        ev = json.loads(path.read_text())
        if (ev.get("split"), ev.get("num_particles"), ev.get("seed")) == ("test", particles, seed):
            return ev
    return run.kind.evaluate(run, particles=particles, seed=seed, write=False)


def measure(run, classifier, num: int, seed: int, particles: int) -> dict:
    t0 = time.perf_counter()
    ev = _evaluation(run, particles, seed)
    out = {"log_evidence": ev["log_evidence"], "elbo": ev["elbo"], "khat_frac_above_0.7": ev["khat_frac_above_0.7"]}
    out["faithfulness_mean"] = digit_faithfulness(_generator(run, num, seed, True), classifier, num=num, seed=seed)
    out["faithfulness_sample"] = digit_faithfulness(_generator(run, num, seed, False), classifier, num=num, seed=seed)
    if run.dataset.condition == "text":
        out["attributes"] = attribute_pairs(_generator(run, num, seed, True), num=num, seed=seed)
    out["measure_seconds"] = time.perf_counter() - t0
    return out


def _ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "mnist"],
                    help="images: the 8x8 digits or MNIST (the text data is DATASET-text)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--encoders", nargs="+", default=["builtin", "minilm"], choices=["builtin", "minilm"])
    ap.add_argument("--standard-prior", action="store_true", help="also the builtin encoder with the N(0, I) prior")
    ap.add_argument("--dropout", type=float, nargs="*", default=[], help="also the builtin encoder with these "
                    "--text-dropout rates")
    ap.add_argument("--mean-pooling", action="store_true", help="also the builtin encoder with mean pooling")
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--num", type=int, default=16, help="images per prompt")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--root", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(None)
    logging.getLogger("dgm_pyro").setLevel(logging.ERROR)  # the held-out fillers are unknown words by design
    root = Path(args.root or tempfile.mkdtemp(prefix="dgm-text-"))
    classifier = digit_classifier(dataset=args.dataset)
    print(f"classifier: {type(classifier).__name__} on the {args.dataset} training split; test accuracy "
          f"{classifier.test_accuracy_:.4f}", flush=True)
    text = f"{args.dataset}-text"
    variants = [("label", dict(dataset=args.dataset))]
    variants += [(f"text-{e}", dict(dataset=text, text_encoder=e)) for e in args.encoders]
    if args.standard_prior:
        variants.append(("text-builtin-standard-prior", dict(dataset=text, prior="standard")))
    variants += [(f"text-builtin-dropout{p:g}", dict(dataset=text, text_dropout=p)) for p in args.dropout]
    if args.mean_pooling:
        variants.append(("text-builtin-mean-pooling", dict(dataset=text, text_pooling="mean")))
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for seed in args.seeds:
        for name, kw in variants:
            config = CVAEConfig(seed=seed, epochs=args.epochs, **kw)
            run_dir = root / f"{name}-s{seed}"
            t0 = time.perf_counter()
            summary = train_run(None, run_dir, resume=True) if run_dir.exists() else train_run(config, run_dir)
            train_s = time.perf_counter() - t0
            run = load_run(run_dir)
            res = measure(run, classifier, args.num, seed, args.particles)
            res.update(seed=seed, train_seconds=train_s, epochs_run=summary.get("epochs_run"))
            results[name].append(res)
            attrs = res.get("attributes", {})
            print(f"{name} seed {seed}: LL {res['log_evidence']:.3f}, k-hat>0.7 {res['khat_frac_above_0.7']:.1%}, digit "
                  f"(mean) {res['faithfulness_mean']['overall']:.3f}, (draws) {res['faithfulness_sample']['overall']:.3f}"
                  + "".join(f", {a} {v['right_way']:.3f}" for a, v in attrs.items())
                  + f"; train {train_s:.0f} s", flush=True)
    label_ll = [r["log_evidence"] for r in results["label"]]
    print(f"\n| model | digit read correctly, decoder mean (%) | draws (%) | numeral / word (%, mean) | thickness "
          f"pairs right (%) | slant pairs right (%) | test log-likelihood (IS, K={args.particles}) | minus label "
          f"CVAE's | k-hat > 0.7 (%) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        fm = [r["faithfulness_mean"] for r in rows]
        attrs = [r.get("attributes") for r in rows]
        cell = (lambda a: _ms([x[a]["right_way"] for x in attrs], 100)) if attrs[0] else (lambda a: "n/a")
        print(f"| {name} | {_ms([f['overall'] for f in fm], 100)} | "
              f"{_ms([r['faithfulness_sample']['overall'] for r in rows], 100)} | "
              f"{_ms([f['by_form']['numeral'] for f in fm], 100)} / {_ms([f['by_form']['word'] for f in fm], 100)} | "
              f"{cell('thickness')} | {cell('slant')} | {_ms([r['log_evidence'] for r in rows], digits=2)} | "
              f"{_ms([r['log_evidence'] - b for r, b in zip(rows, label_ll)], digits=2)} | "
              f"{_ms([r['khat_frac_above_0.7'] for r in rows], 100)} |")
    print("\nper held-out phrasing (decoder mean, %):")
    for name, rows in results.items():
        names = rows[0]["faithfulness_mean"]["by_template"]
        print(f"  {name}: " + ", ".join(f"{t} {_ms([r['faithfulness_mean']['by_template'][t] for r in rows], 100)}"
                                        for t in names))
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "dataset": args.dataset,
                               "classifier": type(classifier).__name__,
                               "classifier_test_accuracy": classifier.test_accuracy_,
                               "num_per_prompt": args.num, "particles": args.particles,
                               "test_images": load_dataset(args.dataset).sizes()["test"], "results": results})
        print(f"wrote {args.json}")
    print(json.dumps({"root": str(root)}))


if __name__ == "__main__":
    main()
