"""Resuming from a checkpoint: the position in an epoch and the optimiser state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cuvis_dsl import CuvisDSLWarning, Pipeline, Trainer, loss, metric
from cuvis_dsl._checkpoint import capture_rng
from cuvis_dsl._resume import EpochPosition, restore_optimizer


def test_a_fresh_epoch_starts_at_batch_zero_with_empty_sums():
    position = EpochPosition()

    iterator, start, aggregate = position.begin([{"x": 1}, {"x": 2}], epoch=0)

    assert (list(iterator), start, aggregate.compute()) == ([{"x": 1}, {"x": 2}], 0, {})
    assert not position.mid_epoch


def test_resuming_mid_epoch_skips_the_done_batches_and_restores_the_sums():
    done = EpochPosition()
    _, _, aggregate = done.begin(["a", "b", "c"], epoch=3)
    aggregate.add("train/loss", 2.0, weight=4)
    done.advance(0)
    checkpoint = {"rng": capture_rng(), **done.state_dict()}
    resumed = EpochPosition()

    resumed.resume_at(checkpoint)
    iterator, start, sums = resumed.begin(["a", "b", "c"], epoch=3)

    assert (list(iterator), start) == (["b", "c"], 1)
    assert sums.compute() == {"train/loss": 2.0}


def test_an_ended_epoch_saves_no_position():
    position = EpochPosition()
    position.begin(["a"], epoch=0)
    position.advance(0)

    position.end()

    assert position.state_dict() == {
        "batch_idx": 0,
        "epoch_rng": None,
        "aggregate": None,
    }


def test_an_optimiser_state_without_an_optimiser_is_an_error():
    with pytest.raises(ValueError, match="this trainer has no optimiser"):
        restore_optimizer(None, {"optimizer": {"state": {}, "param_groups": []}})


def test_a_checkpoint_without_optimiser_state_warns_that_it_starts_afresh():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    with pytest.warns(CuvisDSLWarning, match="starts afresh"):
        restore_optimizer(optimizer, {"optimizer": None})


class Count:
    """A stateful metric: update, compute, reset."""

    def __init__(self) -> None:
        self.n = 0

    def update(self) -> None:
        self.n += 1

    def compute(self) -> float:
        return float(self.n)

    def reset(self) -> None:
        self.n = 0


COUNT = Count()


@metric(stages="train")
def count(x: Tensor) -> Count:
    COUNT.update()
    return COUNT


@loss
def level(x: Tensor) -> Tensor:
    return x.mean()


def test_a_mid_epoch_checkpoint_warns_that_stateful_metrics_are_not_saved(tmp_path):
    paths = []

    class SaveFirst:
        def on_train_batch_end(self, trainer, batch_idx, outputs):
            if batch_idx == 0:
                paths.append(trainer.save_checkpoint(tmp_path / "mid.pt"))

    trainer = Trainer(Pipeline([level, count]), callbacks=[SaveFirst()], progress=False)

    with pytest.warns(CuvisDSLWarning, match="does not hold the state of stateful"):
        trainer.fit([{"x": torch.ones(2)}] * 2)

    assert torch.load(paths[0], weights_only=True)["batch_idx"] == 1
