"""C12: epoch losses and metrics are means over samples, not over batches.

Five validation samples with per-sample losses 1, 1, 2, 2, 4 and
correctness 1, 1, 1, 0, 0. At batch size 2 the batches hold 2, 2 and 1
samples; the batch means are 1, 2, 4 (loss) and 1, 0.5, 0 (accuracy), whose
plain means would be 2.333 and 0.5. The epoch values must be 10/5 = 2.0
and 3/5 = 0.6 at every batch size.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cuvis_dsl import Metric, Pipeline, Trainer, loss, metric

LOSSES = torch.tensor([1.0, 1.0, 2.0, 2.0, 4.0])
CORRECT = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])


def split(batch_size: int) -> list[dict[str, Tensor]]:
    return [
        {"sample_loss": chunk, "correct": right}
        for chunk, right in zip(LOSSES.split(batch_size), CORRECT.split(batch_size))
    ]


@loss
def per_sample(sample_loss: Tensor) -> Tensor:
    return sample_loss.mean()


@metric
def accuracy(correct: Tensor) -> Tensor:
    return correct.mean()


@metric(name="accuracy", outputs="metrics")
def accuracy_as_metric_objects(correct: Tensor) -> list[Metric]:
    return [Metric(name="accuracy", value=correct.mean())]


class CountingAccuracy:
    """A stateful metric with the torchmetrics protocol."""

    def __init__(self) -> None:
        self.reset()

    def update(self, correct: Tensor) -> None:
        self.right += float(correct.sum())
        self.total += correct.numel()

    def compute(self) -> Tensor:
        return torch.tensor(self.right / self.total)

    def reset(self) -> None:
        self.right, self.total = 0.0, 0


STATEFUL = CountingAccuracy()


@metric(name="accuracy", outputs="accuracy")
def stateful_accuracy(correct: Tensor) -> CountingAccuracy:
    STATEFUL.update(correct)
    return STATEFUL


def validate(nodes, batch_size: int, **options) -> dict[str, float]:
    trainer = Trainer(Pipeline(nodes), progress=False, **options)
    return trainer.validate(split(batch_size))


def test_epoch_values_are_sample_weighted_at_batch_size_two():
    values = validate([per_sample, accuracy], batch_size=2)

    assert values["val/loss"] == pytest.approx(2.0, abs=1e-6)
    assert values["val/per_sample"] == pytest.approx(2.0, abs=1e-6)
    assert values["val/accuracy"] == pytest.approx(0.6, abs=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "metric_node",
    [accuracy, accuracy_as_metric_objects, stateful_accuracy],
    ids=["scalar", "metric-objects", "stateful"],
)
def test_epoch_values_do_not_depend_on_the_batch_size(batch_size, metric_node):
    values = validate([per_sample, metric_node], batch_size=batch_size)

    assert values["val/loss"] == pytest.approx(2.0, abs=1e-6)
    assert values["val/accuracy"] == pytest.approx(0.6, abs=1e-6)


def test_fit_weights_train_and_val_epochs_by_samples():
    trainer = Trainer(Pipeline([per_sample, accuracy]), max_epochs=2, progress=False)

    history = trainer.fit(split(2), val=split(2))

    assert history["train/loss"] == pytest.approx([2.0, 2.0], abs=1e-6)
    assert history["val/loss"] == pytest.approx([2.0, 2.0], abs=1e-6)
    assert history["val/accuracy"] == pytest.approx([0.6, 0.6], abs=1e-6)


def test_a_batch_without_a_leading_dimension_is_an_error_not_a_plain_mean():
    batches = [{"sample_loss": torch.tensor(value)} for value in (1.0, 2.0, 4.0)]

    with pytest.raises(ValueError, match="cannot infer the batch size") as caught:
        Trainer(Pipeline([per_sample]), progress=False).validate(batches)

    assert "Fix: Trainer(..., batch_size=" in str(caught.value)


def test_disagreeing_leading_dimensions_are_an_error_naming_the_keys():
    batches = [{**batch, "bands": torch.zeros(7)} for batch in split(2)]

    with pytest.raises(ValueError, match="leading dimensions") as caught:
        Trainer(Pipeline([per_sample]), progress=False).validate(batches)

    assert "bands=7" in str(caught.value)
    assert "batch_size='bands'" in str(caught.value)


@pytest.mark.parametrize("rule", ["sample_loss", lambda batch: len(batch["correct"])])
def test_batch_size_rule_resolves_ambiguous_batches(rule):
    batches = [{**batch, "bands": torch.zeros(7)} for batch in split(2)]
    trainer = Trainer(Pipeline([per_sample, accuracy]), progress=False, batch_size=rule)

    values = trainer.validate(batches)

    assert values["val/loss"] == pytest.approx(2.0, abs=1e-6)
    assert values["val/accuracy"] == pytest.approx(0.6, abs=1e-6)


@metric(outputs="metrics")
def weighted_accuracy(right: float, total: int) -> Metric:
    return Metric(name="accuracy", value=right / total, weight=total)


def test_metric_weight_is_used_when_the_batch_has_no_tensors():
    batches = [
        {"right": 2.0, "total": 2},
        {"right": 1.0, "total": 2},
        {"right": 0.0, "total": 1},
    ]

    values = Trainer(Pipeline([weighted_accuracy]), progress=False).validate(batches)

    assert values == {"val/accuracy": pytest.approx(0.6, abs=1e-6)}
