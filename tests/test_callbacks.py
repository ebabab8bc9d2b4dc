"""Callbacks: early stopping, best checkpoints, their saved states."""

from __future__ import annotations

import warnings

import pytest

from cuvis_dsl import BestCheckpoint, Callback, CuvisDSLWarning, EarlyStopping
from cuvis_dsl._callbacks import callback_states, restore_callback_states


class FakeTrainer:
    def __init__(self) -> None:
        self.should_stop = False
        self.saved: list[str] = []

    def save_checkpoint(self, path) -> None:
        self.saved.append(str(path))


def feed(callback: Callback, values: list[dict]) -> FakeTrainer:
    trainer = FakeTrainer()
    for epoch, logs in enumerate(values):
        callback.on_epoch_end(trainer, epoch, logs)
        if trainer.should_stop:
            break
    return trainer


def test_early_stopping_waits_patience_epochs_in_max_mode():
    stopper = EarlyStopping("val/auroc", mode="max", patience=2)
    values = [{"val/auroc": v} for v in (0.5, 0.7, 0.6, 0.7, 0.65, 0.9)]

    trainer = feed(stopper, values)

    assert trainer.should_stop and stopper.stopped_epoch == 3
    assert stopper.best == 0.7


def test_early_stopping_ignores_epochs_where_its_stage_did_not_run():
    stopper = EarlyStopping("val/loss", patience=1)
    values = [{"val/loss": 1.0}, {"train/loss": 5.0}, {"val/loss": 0.5}]

    trainer = feed(stopper, values)

    assert not trainer.should_stop and stopper.wait == 0


def test_min_delta_requires_a_real_improvement():
    stopper = EarlyStopping("val/loss", patience=1, min_delta=0.1)

    trainer = feed(stopper, [{"val/loss": 1.0}, {"val/loss": 0.95}])

    assert trainer.should_stop


def test_monitor_without_a_stage_is_rejected_with_a_fix():
    with pytest.raises(ValueError, match="monitor='val/auroc'"):
        EarlyStopping("auroc")


def test_best_checkpoint_saves_only_on_improvement():
    best = BestCheckpoint("val/loss", path="best.pt")

    trainer = feed(best, [{"val/loss": v} for v in (3.0, 2.0, 2.5, 1.0)])

    assert trainer.saved == ["best.pt"] * 3
    assert (best.best, best.best_epoch) == (1.0, 3)


def test_callback_states_round_trip_into_matching_callbacks():
    stopper = EarlyStopping("val/loss", patience=5)
    feed(stopper, [{"val/loss": 1.0}, {"val/loss": 2.0}])
    fresh = EarlyStopping("val/loss", patience=5)

    restore_callback_states([fresh], callback_states([stopper]), "ckpt.pt")

    assert (fresh.best, fresh.wait) == (1.0, 1)


def test_callback_states_must_match_the_callbacks():
    states = callback_states([EarlyStopping()])

    with pytest.raises(ValueError, match=r"\['EarlyStopping'\], this trainer has \[\]"):
        restore_callback_states([], states, "ckpt.pt")


def test_unmatched_callbacks_keep_their_state_when_not_strict():
    states = callback_states([EarlyStopping("val/loss")])
    states[0]["state"] = {"best": 0.5, "wait": 2}
    best = BestCheckpoint("val/loss", path="best.pt")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_callback_states([], states, "ckpt.pt", strict=False)
    with pytest.warns(CuvisDSLWarning, match="states are not restored"):
        restore_callback_states([best], states, "ckpt.pt", strict=False)

    assert best.best is None
