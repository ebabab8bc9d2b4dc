"""History: per-epoch records, lookup, best epoch and the printed table."""

from __future__ import annotations

import pytest

from cuvis_dsl import History


def sample() -> History:
    history = History()
    history.add(0, {"val/acc": 0.5, "train/mse": 2.0, "train/loss": 2.0})
    history.add(1, {"train/mse": 1.0, "train/loss": 1.0})
    history.add(2, {"val/acc": 0.75, "train/mse": 0.5, "train/loss": 0.5})
    return history


def test_keys_put_train_before_val_and_the_total_loss_first():
    assert sample().keys() == ["train/loss", "train/mse", "val/acc"]


def test_values_per_epoch_are_none_where_a_stage_did_not_run():
    assert sample()["val/acc"] == [0.5, None, 0.75]


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(KeyError, match="Did you mean 'val/acc'"):
        sample()["val/accuracy"]


def test_best_epoch_by_mode():
    history = sample()

    assert history.best("train/loss") == (2, 0.5)
    assert history.best("val/acc", mode="max") == (2, 0.75)
    with pytest.raises(ValueError, match="mode must be"):
        history.best("val/acc", mode="highest")


def test_best_skips_nan_and_refuses_a_key_without_numbers():
    history = History([(0, {"val/loss": float("nan")}), (1, {"val/loss": 3.0})])

    assert history.best("val/loss") == (1, 3.0)
    with pytest.raises(ValueError, match="no recorded value"):
        History([(0, {"val/loss": float("nan")})]).best("val/loss")


def test_table_has_a_row_per_epoch_and_a_dash_for_missing_values():
    lines = sample().table(precision=2).splitlines()

    assert lines[0].split() == ["epoch", "train/loss", "train/mse", "val/acc"]
    assert lines[2].split() == ["1", "1.00", "1.00", "-"]
    assert str(sample()) == sample().table()


def test_table_of_chosen_columns_and_of_an_empty_history():
    assert sample().table(["val/acc"]).splitlines()[1].split() == ["0", "0.5000"]
    assert History().table() == "epoch\n(no epochs)"


def test_state_dict_round_trip():
    history = sample()
    copy = History.from_state_dict(history.state_dict())

    assert copy.records == history.records and copy.epochs == history.epochs
    assert list(copy) == list(zip(history.epochs, history.records))
    assert copy.last == {"val/acc": 0.75, "train/mse": 0.5, "train/loss": 0.5}
