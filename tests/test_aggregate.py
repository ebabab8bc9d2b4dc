"""Epoch aggregation: batch sizes, sample-weighted means, stateful metrics."""

from __future__ import annotations

import pytest
import torch

from cuvis_dsl import ExecutionStage
from cuvis_dsl._aggregate import (
    EpochAggregate,
    as_scalar,
    batch_size_of,
    is_stateful_metric,
    log_key,
)


def test_batch_size_is_the_shared_leading_dimension():
    batch = {"cube": torch.zeros(5, 3, 2), "label": torch.zeros(5), "name": "a"}

    assert batch_size_of(batch) == 5


def test_scalars_and_plain_values_do_not_count_for_the_batch_size():
    batch = {"cube": torch.zeros(3, 2), "lr": torch.tensor(0.1), "tags": [1, 2]}

    assert batch_size_of(batch) == 3


def test_batch_size_from_a_key_or_a_callable():
    batch = {"cube": torch.zeros(4, 7), "bands": torch.zeros(7)}

    assert batch_size_of(batch, "cube") == 4
    assert batch_size_of(batch, lambda b: 9) == 9


def test_no_leading_dimension_is_an_error_with_a_fix():
    with pytest.raises(ValueError, match="no value of the batch has a leading") as e:
        batch_size_of({"x": torch.tensor(1.0), "y": 3})

    assert "'x', 'y'" in str(e.value) and "Fix:" in str(e.value)


def test_disagreeing_leading_dimensions_are_an_error_suggesting_a_key():
    with pytest.raises(ValueError, match="bands=7, cube=4") as e:
        batch_size_of({"cube": torch.zeros(4, 7), "bands": torch.zeros(7)})

    assert "batch_size='bands'" in str(e.value)


def test_a_batch_size_key_must_exist_and_have_a_leading_dimension():
    with pytest.raises(ValueError, match="names no key of the batch"):
        batch_size_of({"x": torch.zeros(2)}, "cube")
    with pytest.raises(ValueError, match="has no leading dimension"):
        batch_size_of({"x": torch.tensor(2.0)}, "x")


@pytest.mark.parametrize("size", [-1, 2.5, True, "4"])
def test_a_batch_size_callable_must_return_a_count(size):
    with pytest.raises(ValueError, match="expected an int >= 0"):
        batch_size_of({}, lambda batch: size)


def test_epoch_mean_weights_each_batch_by_its_samples():
    epoch = EpochAggregate()
    for value, count in [(1.0, 2), (2.0, 2), (4.0, 1)]:
        epoch.add("val/loss", torch.tensor(value, dtype=torch.float64), count)

    assert epoch.compute() == {"val/loss": pytest.approx(2.0)}


def test_keys_weighted_by_zero_samples_are_left_out_not_nan():
    epoch = EpochAggregate()
    epoch.add("val/loss", float("nan"), 0)
    epoch.add("val/mae", 1.0, 3)

    assert epoch.compute() == {"val/mae": 1.0}
    assert epoch.empty_keys() == ["val/loss"]


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match="expected >= 0"):
        EpochAggregate().add("val/loss", 1.0, -1)


class Running:
    def __init__(self, result):
        self.result = result
        self.resets = 0

    def update(self, *args):
        pass

    def compute(self):
        return self.result

    def reset(self):
        self.resets += 1


def test_stateful_metrics_are_computed_once_and_reset_on_request():
    epoch = EpochAggregate()
    metric = Running(torch.tensor(0.75))
    epoch.add_stateful("val/auroc", metric, node="auroc")
    epoch.add_stateful("val/auroc", metric, node="auroc")

    assert epoch.compute() == {"val/auroc": 0.75}
    epoch.reset_stateful()
    assert metric.resets == 1


def test_stateful_metric_returning_a_dict_reports_every_key_under_the_stage():
    epoch = EpochAggregate()
    epoch.add_stateful("val/scores", Running({"auroc": 0.5, "val/ap": 0.25}), "n")

    assert epoch.compute() == {"val/auroc": 0.5, "val/ap": 0.25}


def test_two_stateful_objects_under_one_key_are_an_error():
    epoch = EpochAggregate()
    epoch.add_stateful("val/auroc", Running(0.1), node="a")

    with pytest.raises(ValueError, match="node 'b'"):
        epoch.add_stateful("val/auroc", Running(0.2), node="b")


def test_state_dict_round_trip_keeps_the_weighted_sums():
    epoch = EpochAggregate()
    epoch.add("train/loss", torch.tensor(3.0, dtype=torch.float64), 2)
    copy = EpochAggregate()
    copy.load_state_dict(epoch.state_dict())
    copy.add("train/loss", 0.0, 4)

    assert copy.compute() == {"train/loss": 1.0}


def test_stateful_protocol_needs_all_three_methods():
    class Partial:
        def update(self):
            pass

        def compute(self):
            pass

    assert is_stateful_metric(Running(0)) and not is_stateful_metric(Partial())


def test_log_key_prefixes_the_stage_once():
    assert log_key(ExecutionStage.VAL, "accuracy") == "val/accuracy"
    assert log_key(ExecutionStage.VAL, "val/accuracy") == "val/accuracy"
    assert log_key(ExecutionStage.TEST, "val/accuracy") == "test/val/accuracy"


def test_as_scalar_accepts_numbers_and_one_element_tensors_only():
    assert as_scalar(torch.tensor([0.5]), "m").item() == 0.5
    assert as_scalar(3, "m") == 3.0
    with pytest.raises(ValueError, match=r"m is Tensor\[float32, \(2,\)"):
        as_scalar(torch.zeros(2), "m")
    with pytest.raises(TypeError, match="expected a scalar tensor"):
        as_scalar("high", "m")
