"""Material classification of real reflectance spectra, in every execution stage.

Data: the measured spectra of earthlib 1.1.0 (see ``spectra.py``), labelled
with their LEVEL_3 material class; the 14 classes with at least 20 spectra
are kept (soil, road, paint, roofing shingles, bark, char, ...), at most 100
spectra each, split 60/20/20 per class.

The pipeline, and the stages its nodes run in::

    augment           TRAIN           spectra -> spectra      brightness, noise
    split_brightness  ALWAYS          spectra -> shape, brightness
    standardise       ALWAYS          shape, brightness -> features  statistical
    classifier        ALWAYS          features -> logits      learned (dropout)
    cross_entropy     TRAIN|VAL|TEST  logits, label -> cross_entropy
    accuracy          VAL|TEST        logits, label -> Metric (sample-weighted)
    macro_f1          VAL|TEST        logits, label -> macro_f1  stateful
    decide            INFERENCE       logits -> predicted, confidence

Materials differ more in the *shape* of their spectra than in brightness,
which depends on illumination and grain size, so the spectrum is split into
its mean (brightness) and the spectrum divided by it (shape); the augmentation
varies brightness by up to 20 % to make the classifier rely on shape.

Phase 1 is statistical: ``standardise`` learns the mean and deviation of each
feature. Its statistics come from the TRAIN stage (the trainer's default), so
they describe the training data as training sees it, augmentation included.
The classifier is still untrained then, so phase 1 scores are at chance
level. Phase 2 trains the classifier.

Run ``python examples/material_classification.py``; ``--limit N`` caps each
class at N spectra, ``--out DIR`` sets where the figure goes.
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
    from spectra import Split, classification_splits, load_spectra
except ImportError:  # imported as examples.material_classification
    from examples.spectra import Split, classification_splits, load_spectra

from cuvis_dsl import (
    Context,
    ExecutionStage,
    Metric,
    Pipeline,
    PortSpec,
    Trainer,
    loss,
    metric,
    node,
)

Spectra = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, "C"))]
Features = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, "F"))]
Column = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, 1))]
Labels = Annotated[Tensor, PortSpec(dtype=torch.int64, shape=(-1,))]

STAGES = ("train", "val", "test", "inference")
BATCH_SIZE = 64


@node(stages=ExecutionStage.TRAIN, outputs="spectra")
def augment(spectra: Spectra, context: Context) -> Spectra:
    """TRAIN: scale each spectrum's brightness by 0.8-1.2, add small noise."""
    generator = torch.Generator().manual_seed(context.global_step)
    gain = 0.8 + 0.4 * torch.rand(len(spectra), 1, generator=generator)
    noise = 0.005 * torch.randn(spectra.shape, generator=generator)
    return spectra * gain + noise


@node(outputs=("shape", "brightness"))
def split_brightness(spectra: Spectra) -> tuple[Spectra, Column]:
    """A spectrum is its brightness (mean) times its shape."""
    brightness = spectra.mean(dim=-1, keepdim=True).clamp_min(1e-3)
    return spectra / brightness, brightness


@node(outputs="features")
class Standardise(torch.nn.Module):
    """Shape and log-brightness, each feature scaled to zero mean, unit deviation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))

    @staticmethod
    def _stack(shape: Tensor, brightness: Tensor) -> Tensor:
        return torch.cat([shape, brightness.log()], dim=-1)

    @torch.no_grad()
    def statistical_initialization(self, stream: Any) -> None:
        rows = torch.cat([self._stack(**item) for item in stream]).double()
        self.mean = rows.mean(dim=0).float()
        self.std = rows.std(dim=0).clamp_min(1e-6).float()

    def forward(self, shape: Spectra, brightness: Column) -> Features:
        return (self._stack(shape, brightness) - self.mean) / self.std


@node(outputs="logits")
class Classifier(torch.nn.Module):
    """A small perceptron; dropout makes train and eval mode differ."""

    def __init__(self, features: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden, classes),
        )

    def forward(self, features: Features) -> Tensor:
        return self.layers(features)


@loss
def cross_entropy(logits: Tensor, label: Labels) -> Tensor:
    """TRAIN|VAL|TEST: the training objective, also reported in VAL and TEST."""
    return torch.nn.functional.cross_entropy(logits, label)


@metric
def accuracy(logits: Tensor, label: Labels, context: Context) -> Metric:
    """VAL|TEST: share of correct predictions, weighted by the batch size."""
    correct = (logits.argmax(dim=-1) == label).float()
    return Metric(
        name="accuracy",
        value=correct.mean(),
        stage=context.stage,
        epoch=context.epoch,
        batch_idx=context.batch_idx,
        weight=len(correct),
    )


@metric(outputs="macro_f1")
class MacroF1(torch.nn.Module):
    """VAL|TEST: F1 per class averaged over classes, over the whole run.

    F1 is not a mean of per-batch values, so the node accumulates a confusion
    matrix and returns itself: the trainer calls ``compute`` after the run's
    last batch, then ``reset``.
    """

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.classes, self.classes, dtype=torch.int64)

    def update(self, logits: Tensor, label: Tensor) -> None:
        cells = label * self.classes + logits.argmax(dim=-1)
        counts = torch.bincount(cells, minlength=self.classes**2)
        self.confusion += counts.reshape(self.classes, self.classes)

    def compute(self) -> float:
        hits = self.confusion.diag().double()
        wrong = self.confusion.sum(0) + self.confusion.sum(1) - 2 * hits
        return float((2 * hits / (2 * hits + wrong).clamp_min(1)).mean())

    def forward(self, logits: Tensor, label: Labels) -> MacroF1:
        self.update(logits.detach(), label)
        return self


@node(stages=ExecutionStage.INFERENCE, outputs=("predicted", "confidence"))
def decide(logits: Tensor) -> tuple[Tensor, Tensor]:
    """INFERENCE: the most likely class and its probability."""
    confidence, predicted = torch.softmax(logits, dim=-1).max(dim=-1)
    return predicted, confidence


def build_pipeline(bands: int, classes: int) -> Pipeline:
    """The classifier as one pipeline; the node order does not matter."""
    return Pipeline(
        [
            augment,
            split_brightness,
            Standardise(),
            Classifier(bands + 1, classes),
            cross_entropy,
            accuracy,
            MacroF1(classes),
            decide,
        ]
    )


class Batches:
    """Batches of one split as dicts; reshuffled on every pass when asked."""

    def __init__(self, split: Split, labels: bool = True, shuffle: bool = False):
        self.spectra = torch.from_numpy(split.x)
        self.label = torch.from_numpy(split.y) if labels else None
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
        default=Path("outputs/material_classification"),
        help="folder for the figure (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=100, help="at most N spectra per class"
    )
    parser.add_argument("--epochs", type=int, default=60, help="epochs of phase 2")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and model")
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


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    columns = [
        ("val", "accuracy"),
        ("val", "macro_f1"),
        ("test", "accuracy"),
        ("test", "macro_f1"),
    ]
    header = f"{'phase':<24}" + "".join(
        f"{stage + ' ' + name:>16}" for stage, name in columns
    )
    lines = [header]
    for phase, values in results.items():
        cells = "".join(
            f"{values[stage][f'{stage}/{name}']:>16.4f}" for stage, name in columns
        )
        lines.append(f"{phase:<24}{cells}")
    return "\n".join(lines)


def plot_confusion(
    truth: np.ndarray, predicted: np.ndarray, names: list[str], out: Path
) -> Path:
    """The test split's confusion matrix, rows normalised to recall."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count = len(names)
    confusion = np.zeros((count, count))
    np.add.at(confusion, (truth, predicted), 1)
    recall = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(recall, cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(count), names, rotation=90)
    axes.set_yticks(range(count), names)
    axes.set(xlabel="predicted", ylabel="true", title="test split, row-normalised")
    figure.colorbar(image, ax=axes)
    path = out / "confusion.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


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
    splits, names = classification_splits(
        load_spectra(), level="LEVEL_3", seed=args.seed, max_per_class=args.limit
    )
    sizes = ", ".join(f"{name} {len(split.y)}" for name, split in splits.items())
    print(f"{len(names)} classes: {', '.join(names)}\nspectra: {sizes}")
    train = Batches(splits["train"], shuffle=True)
    val, test = Batches(splits["val"]), Batches(splits["test"])
    unlabelled = Batches(splits["test"], labels=False)

    pipe = build_pipeline(bands=splits["train"].x.shape[1], classes=len(names))
    plans = {stage: pipe.plan(stage) for stage in STAGES}
    for plan in plans.values():
        print(f"\n{plan}")

    trainer = Trainer(
        pipe,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4),
        max_epochs=args.epochs,
        progress=not args.no_progress,
    )
    results = {}
    initialised = trainer.statistical_initialization(train)
    print(f"\nphase 1: statistical initialisation of {initialised}")
    results["1: statistics only"] = {
        "val": trainer.validate(val),
        "test": trainer.test(test),
    }

    print(f"\nphase 2: training the classifier for {args.epochs} epochs")
    history = trainer.fit(train, val)
    shown = [epoch for epoch in history.epochs if (epoch + 1) % 10 == 0]
    keys = ["train/cross_entropy", "val/cross_entropy", "val/accuracy", "val/macro_f1"]
    for epoch in shown:
        record = history.records[epoch]
        print(f"epoch {epoch:3d}  " + "  ".join(f"{k} {record[k]:.4f}" for k in keys))
    results["2: trained classifier"] = {
        "val": trainer.validate(val),
        "test": trainer.test(test),
    }

    outputs = trainer.predict(unlabelled)
    predicted = torch.cat([out["predicted"] for out in outputs]).numpy()
    truth = splits["test"].y
    print(f"\ninference on {len(predicted)} test spectra, recall per class:")
    for index, name in enumerate(names):
        mine = truth == index
        print(f"  {name:<14} {np.mean(predicted[mine] == index):.2f}  ({mine.sum()})")
    print(f"\n{table(results)}")
    figure = plot_confusion(truth, predicted, names, args.out)
    print(f"\nfigure: {figure}")
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.1f} s")
    return {
        "plans": plans,
        "results": results,
        "history": history,
        "predicted": predicted,
        "classes": names,
        "figures": [figure],
        "seconds": elapsed,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
