"""Anomaly detection on real reflectance spectra, through every execution stage.

Data: the measured spectra of earthlib 1.1.0 (see ``spectra.py``). Soil is
the background; built materials (roofing, roads, paint, concrete, ...) are the
anomalies. The train split holds soil only; val and test add 15 % anomalies.

The pipeline, and the stages its nodes run in::

    augment      TRAIN           spectra -> spectra         brightness, noise
    normalise    ALWAYS          spectra -> normalised      statistical
    rx_detector  ALWAYS          normalised -> whitened, rx_score   statistical
    reference    TRAIN           whitened, rx_score, label -> (same names)
    score_head   ALWAYS          whitened, rx_score -> logits   statistical, learned
    bce          TRAIN|VAL|TEST  logits, label -> bce
    epoch_auroc  VAL|TEST        logits, label -> auroc     stateful, whole run
    epoch_f1     VAL|TEST        logits, label -> f1        stateful, whole run
    decide       INFERENCE       logits -> probability, is_anomaly

``augment`` and ``reference`` *rebind* the names they read: in TRAIN every
consumer sees their output, in the other stages the original values.

Phase 1 is statistical: the normaliser learns per-band mean and deviation,
the RX detector the mean and (ridge-regularised) covariance of the normalised
background, and the head the 99th percentile of the background's RX scores.
The head starts as ``logits = log(rx_score) - log(threshold)``, so phase 1
evaluates the plain RX detector with that threshold.

Phase 2 trains the head. Training data holds no anomalies, so a BCE loss
needs a second class; it comes from a *reference distribution*. In TRAIN,
``reference`` appends as many samples drawn from the RX model itself, a
Gaussian in the whitened coordinates with its spread inflated by 1.2-2x,
labelled 1. A classifier between data and a known reference distribution
estimates their density ratio, which is an anomaly score: where the soil
spectra follow the Gaussian, it orders samples like RX; where they do not,
it learns the real shape of the background. Unlike hand-made
pseudo-anomalies (spectra mixed with flat or bumpy curves, which trained
heads worse than RX alone on this data), this assumes nothing about what
anomalies look like. The head is RX plus a small
correction network whose last layer starts at zero, so training starts from
the phase-1 detector. The statistics of phase 1 are taken in VAL
(``statistical_stage="val"``): there neither the augmentation nor the
reference samples run, so they describe the clean background.

The augmentation scales brightness by up to 10 % and adds very small noise:
RX relies on directions in which smooth soil spectra hardly vary, and noise
much above 1e-4 in reflectance would dominate exactly those.

Run ``python examples/anomaly_detection.py``; ``--limit N`` uses N background
spectra (for a quick run), ``--out DIR`` sets where the figures go.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor

try:
    from spectra import Split, anomaly_splits, load_spectra
except ImportError:  # imported as examples.anomaly_detection
    from examples.spectra import Split, anomaly_splits, load_spectra

from cuvis_dsl import (
    Context,
    ExecutionStage,
    Pipeline,
    PortSpec,
    Trainer,
    loss,
    metric,
    node,
)

Spectra = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, "C"))]
Scores = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1,))]

STAGES = ("train", "val", "test", "inference")
BATCH_SIZE = 256
QUANTILE = 0.99
RIDGE = 1e-6


def _generator(context: Context, salt: int) -> torch.Generator:
    """A generator seeded by the training step, so that runs repeat exactly."""
    return torch.Generator().manual_seed(1_000_003 * salt + context.global_step)


@node(stages=ExecutionStage.TRAIN, outputs="spectra")
def augment(spectra: Spectra, context: Context) -> Spectra:
    """TRAIN: scale each spectrum's brightness by 0.9-1.1, add tiny noise."""
    generator = _generator(context, salt=1)
    gain = 0.9 + 0.2 * torch.rand(len(spectra), 1, generator=generator)
    noise = 1e-4 * torch.randn(spectra.shape, generator=generator)
    return spectra * gain + noise


@node(outputs="normalised")
class Normalise(torch.nn.Module):
    """Per-band standardisation with statistics from the training spectra."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))

    @torch.no_grad()
    def statistical_initialization(self, stream: Any) -> None:
        total, squares, count = 0.0, 0.0, 0
        for item in stream:
            x = item["spectra"].double()
            total = total + x.sum(dim=0)
            squares = squares + (x * x).sum(dim=0)
            count += len(x)
        mean = total / count
        variance = (squares / count - mean * mean).clamp_min(1e-12)
        self.mean = mean.float()
        self.std = variance.sqrt().float()

    def forward(self, spectra: Spectra) -> Spectra:
        return (spectra - self.mean) / self.std


@node(outputs=("whitened", "rx_score"))
class RXDetector(torch.nn.Module):
    """Reed-Xiaoli detector: the Mahalanobis distance to the background.

    ``whitened`` is ``L^-1 (x - mean)`` with ``L L^T`` the covariance, so that
    ``rx_score = |whitened|^2``. The covariance gets a ridge of ``ridge``
    times its mean variance, which keeps it invertible when there are fewer
    spectra than bands.
    """

    def __init__(self, ridge: float = RIDGE) -> None:
        super().__init__()
        self.ridge = ridge
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("whitening", torch.empty(0))

    @torch.no_grad()
    def statistical_initialization(self, stream: Any) -> None:
        total, outer, count = 0.0, 0.0, 0
        for item in stream:
            x = item["normalised"].double()
            total = total + x.sum(dim=0)
            outer = outer + x.T @ x
            count += len(x)
        mean = total / count
        covariance = (outer - count * torch.outer(mean, mean)) / max(count - 1, 1)
        bands = len(mean)
        covariance += self.ridge * covariance.trace() / bands * torch.eye(bands)
        factor = torch.linalg.cholesky(covariance.to(torch.float64))
        self.mean = mean.float()
        self.whitening = torch.linalg.inv(factor).float()

    def forward(self, normalised: Spectra) -> tuple[Spectra, Scores]:
        whitened = (normalised - self.mean) @ self.whitening.T
        return whitened, whitened.pow(2).sum(dim=-1)


@node(stages=ExecutionStage.TRAIN, outputs=("whitened", "rx_score", "label"))
def reference(
    whitened: Spectra, rx_score: Scores, label: Scores, context: Context
) -> tuple[Spectra, Scores, Scores]:
    """TRAIN: append one reference sample (label 1) per background sample."""
    generator = _generator(context, salt=2)
    count, bands = whitened.shape
    spread = 1.2 + 0.8 * torch.rand(count, 1, generator=generator)
    drawn = spread * torch.randn(count, bands, generator=generator)
    return (
        torch.cat([whitened, drawn]),
        torch.cat([rx_score, drawn.pow(2).sum(dim=-1)]),
        torch.cat([label, torch.ones(count)]),
    )


@node(outputs="logits")
class ScoreHead(torch.nn.Module):
    """RX score relative to a background quantile, plus a learned correction.

    Statistical initialisation sets the threshold (the ``quantile`` of the
    background's RX scores); the correction network starts at zero, so the
    untrained head says ``logits > 0`` exactly when RX exceeds the threshold.
    """

    def __init__(self, bands: int, hidden: int = 64, quantile: float = QUANTILE):
        super().__init__()
        self.quantile = quantile
        self.register_buffer("log_threshold", torch.empty(0))
        self.slope = torch.nn.Parameter(torch.tensor(1.0))
        self.correction = torch.nn.Sequential(
            torch.nn.Linear(bands + 1, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        torch.nn.init.zeros_(self.correction[-1].weight)
        torch.nn.init.zeros_(self.correction[-1].bias)

    @torch.no_grad()
    def statistical_initialization(self, stream: Any) -> None:
        scores = torch.cat([item["rx_score"] for item in stream])
        self.log_threshold = torch.quantile(scores.log(), self.quantile)

    def forward(self, whitened: Spectra, rx_score: Scores) -> Scores:
        excess = rx_score.log() - self.log_threshold
        # whitened coordinates have unit variance on the background; the
        # reference samples reach about 2, so /4 keeps the inputs near 1.
        features = torch.cat([whitened / 4, excess[:, None]], dim=-1)
        return self.slope * excess + self.correction(features).squeeze(-1)


@loss
def bce(logits: Scores, label: Scores) -> Tensor:
    """TRAIN|VAL|TEST: binary cross-entropy against the anomaly label."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, label)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """False and true positive rates at every distinct score threshold."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[last]
    false_positives = (last + 1) - true_positives
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    tpr = np.r_[0.0, true_positives / max(positives, 1)]
    fpr = np.r_[0.0, false_positives / max(negatives, 1)]
    return fpr, tpr


def auroc_of(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half)."""
    fpr, tpr = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


@metric(outputs="auroc")
class EpochAUROC(torch.nn.Module):
    """VAL|TEST: area under the ROC curve over every sample of the run.

    AUROC does not decompose into per-batch means, so the node keeps the
    scores and returns itself, a stateful metric: the trainer calls
    ``compute`` once the run's last batch is in, then ``reset``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, logits: Tensor, label: Tensor) -> None:
        self.scores.append(logits.detach().flatten().cpu())
        self.labels.append(label.detach().flatten().cpu())

    def compute(self) -> float:
        scores = torch.cat(self.scores).double().numpy()
        labels = torch.cat(self.labels).double().numpy()
        return auroc_of(scores, labels)

    def forward(self, logits: Scores, label: Scores) -> EpochAUROC:
        self.update(logits, label)
        return self


@metric(outputs="f1")
class EpochF1(torch.nn.Module):
    """VAL|TEST: F1 of the decision ``logits > 0`` over every sample of the run."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(3, dtype=torch.float64)  # tp, fp, fn

    def update(self, logits: Tensor, label: Tensor) -> None:
        flagged, truth = logits.detach() > 0, label.detach() > 0.5
        self.counts += torch.tensor(
            [
                (flagged & truth).sum(),
                (flagged & ~truth).sum(),
                (~flagged & truth).sum(),
            ]
        )

    def compute(self) -> float:
        tp, fp, fn = self.counts.tolist()
        return 2 * tp / max(2 * tp + fp + fn, 1.0)

    def forward(self, logits: Scores, label: Scores) -> EpochF1:
        self.update(logits, label)
        return self


@node(stages=ExecutionStage.INFERENCE, outputs=("probability", "is_anomaly"))
def decide(logits: Scores) -> tuple[Tensor, Tensor]:
    """INFERENCE: the anomaly probability and the yes/no decision."""
    probability = torch.sigmoid(logits)
    return probability, probability > 0.5


def build_pipeline(bands: int) -> Pipeline:
    """The detector as one pipeline; the node order does not matter."""
    return Pipeline(
        [
            augment,
            Normalise(),
            RXDetector(),
            reference,
            ScoreHead(bands),
            bce,
            EpochAUROC(),
            EpochF1(),
            decide,
        ]
    )


class Batches:
    """Batches of one split as dicts; reshuffled on every pass when asked."""

    def __init__(self, split: Split, labels: bool = True, shuffle: bool = False):
        self.spectra = torch.from_numpy(split.x)
        self.label = torch.from_numpy(split.y).float() if labels else None
        self.generator = torch.Generator().manual_seed(0) if shuffle else None

    def __len__(self) -> int:
        return -(-len(self.spectra) // BATCH_SIZE)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = torch.arange(len(self.spectra))
        if self.generator is not None:
            order = torch.randperm(len(order), generator=self.generator)
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = {"spectra": self.spectra[rows]}
            if self.label is not None:
                batch["label"] = self.label[rows]
            yield batch


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/anomaly_detection"),
        help="folder for the figures (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="use only N background spectra"
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs of phase 2")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and head")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; the matrices are small, so one is fastest",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars"
    )
    return parser.parse_args(argv)


def describe(splits: dict[str, Split]) -> str:
    parts = [
        f"{name} {len(split.y)} ({int(split.y.sum())} anomalies)"
        for name, split in splits.items()
    ]
    return "spectra: " + ", ".join(parts)


def test_scores(trainer: Trainer, batches: Batches) -> np.ndarray:
    """The head's logits for every test spectrum, from an INFERENCE run."""
    outputs = trainer.predict(batches, outputs="logits")
    return torch.cat([out["logits"] for out in outputs]).numpy()


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    columns = [("val", "auroc"), ("val", "f1"), ("test", "auroc"), ("test", "f1")]
    header = f"{'phase':<24}" + "".join(
        f"{stage + ' ' + name.upper():>12}" for stage, name in columns
    )
    lines = [header]
    for phase, values in results.items():
        cells = "".join(
            f"{values[stage][f'{stage}/{name}']:>12.4f}" for stage, name in columns
        )
        lines.append(f"{phase:<24}{cells}")
    return "\n".join(lines)


def plot(scores: dict[str, np.ndarray], labels: np.ndarray, out: Path) -> list[Path]:
    """ROC curves and score histograms of the test split, one per phase."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(5, 5))
    for phase, values in scores.items():
        fpr, tpr = roc_curve(values, labels)
        axes.plot(fpr, tpr, label=f"{phase} (AUROC {auroc_of(values, labels):.4f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate")
    axes.set_title("ROC on the test split")
    axes.legend(loc="lower right")
    roc_path = out / "roc.png"
    figure.savefig(roc_path, dpi=120, bbox_inches="tight")
    plt.close(figure)

    figure, panels = plt.subplots(1, len(scores), figsize=(5 * len(scores), 4))
    for axes, (phase, values) in zip(np.atleast_1d(panels), scores.items()):
        bins = np.linspace(values.min(), values.max(), 60)
        for flag, name in ((0, "background (soil)"), (1, "anomaly (built)")):
            axes.hist(
                values[labels == flag], bins=bins, alpha=0.6, density=True, label=name
            )
        axes.axvline(0.0, color="black", linewidth=1, label="decision threshold")
        axes.set(xlabel="head logit", ylabel="density", title=phase)
        axes.legend()
    histogram_path = out / "score_histograms.png"
    figure.savefig(histogram_path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return [roc_path, histogram_path]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both training phases and inference; print and return the results."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    splits = anomaly_splits(load_spectra(), seed=args.seed, limit=args.limit)
    print(describe(splits))
    train = Batches(splits["train"], shuffle=True)
    val, test = Batches(splits["val"]), Batches(splits["test"])
    unlabelled = Batches(splits["test"], labels=False)

    pipe = build_pipeline(bands=splits["train"].x.shape[1])
    plans = {stage: pipe.plan(stage) for stage in STAGES}
    for plan in plans.values():
        print(f"\n{plan}")

    trainer = Trainer(
        pipe,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4),
        max_epochs=args.epochs,
        statistical_stage="val",
        progress=not args.no_progress,
    )
    results, scores = {}, {}
    print(
        "\nphase 1: statistical initialisation of",
        trainer.statistical_initialization(train),
    )
    results["1: statistics (RX)"] = {
        "val": trainer.validate(val),
        "test": trainer.test(test),
    }
    scores["phase 1: RX"] = test_scores(trainer, unlabelled)

    print(f"\nphase 2: training the head for {args.epochs} epochs")
    history = trainer.fit(train, val)
    print(history.table(["train/bce", "val/bce", "val/auroc", "val/f1"]))
    results["2: trained head"] = {
        "val": trainer.validate(val),
        "test": trainer.test(test),
    }
    scores["phase 2: trained head"] = test_scores(trainer, unlabelled)

    predictions = trainer.predict(unlabelled)
    flagged = torch.cat([out["is_anomaly"] for out in predictions]).numpy()
    truth = splits["test"].y.astype(bool)
    print(
        f"\ninference on {len(flagged)} test spectra: {int(flagged.sum())} flagged, "
        f"{int((flagged & truth).sum())} of {int(truth.sum())} anomalies found, "
        f"{int((flagged & ~truth).sum())} false alarms"
    )
    print(f"\n{table(results)}")
    figures = plot(scores, splits["test"].y, args.out)
    print("\nfigures:", ", ".join(str(path) for path in figures))
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.1f} s")
    return {
        "plans": plans,
        "results": results,
        "history": history,
        "flagged": flagged,
        "figures": figures,
        "seconds": elapsed,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
