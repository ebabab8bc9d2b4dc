"""Reading losses and metrics out of a run's outputs, and naming them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cuvis_dsl import ExecutionStage, Metric, Pipeline, loss, metric, node
from cuvis_dsl._aggregate import EpochAggregate
from cuvis_dsl._collect import Collector, metric_entries

VAL = ExecutionStage.VAL


@node
def pred(x: Tensor) -> Tensor:
    return x


@loss
def bce(pred: Tensor) -> Tensor:
    return pred.mean()


@loss(name="dice", outputs="loss")
def dice_loss(pred: Tensor) -> Tensor:
    return pred.sum()


@metric
def acc(pred: Tensor) -> Tensor:
    return pred.mean()


def collector(*nodes, weights=None) -> Collector:
    return Collector(Pipeline([pred, *nodes]).specs, weights or {})


def test_loss_terms_are_keyed_by_output_name_with_their_weights():
    terms = collector(bce, weights={"bce": 0.5}).losses({"bce": torch.tensor(2.0)}, VAL)

    assert [(t.node, t.output, t.key, t.weight) for t in terms] == [
        ("bce", "bce", "val/bce", 0.5)
    ]


def test_a_loss_output_called_loss_is_keyed_by_its_node():
    terms = collector(dice_loss, weights={"dice": 2.0}).losses(
        {"loss": torch.tensor(1.0)}, VAL
    )

    assert [(t.key, t.weight) for t in terms] == [("val/dice", 2.0)]


def test_fan_in_losses_are_keyed_by_node_in_node_name_order():
    @loss(name="b_part", outputs="part")
    def b_part(pred: Tensor) -> Tensor:
        return pred.mean()

    @loss(name="a_part", outputs="part")
    def a_part(pred: Tensor) -> Tensor:
        return pred.sum()

    outputs = {"part": [torch.tensor(1.0), torch.tensor(2.0)]}
    terms = collector(b_part, a_part).losses(outputs, VAL)

    assert [(t.node, t.key, t.value.item()) for t in terms] == [
        ("a_part", "val/a_part", 1.0),
        ("b_part", "val/b_part", 2.0),
    ]


def test_python_number_losses_become_tensors():
    terms = collector(bce).losses({"bce": 0.25}, VAL)

    assert torch.equal(terms[0].value, torch.tensor(0.25))


def test_unknown_weight_key_is_an_error_listing_loss_outputs():
    with pytest.raises(ValueError, match="Loss outputs: 'bce'"):
        collector(bce, weights={"acc": 1.0})


def test_non_finite_weight_is_an_error():
    with pytest.raises(ValueError, match="not a finite number"):
        collector(bce, weights={"bce": float("inf")})


def test_record_adds_total_losses_and_metrics_weighted_by_batch_size():
    col = collector(bce, acc)
    epoch = EpochAggregate()
    outputs = {"bce": torch.tensor(1.0), "acc": torch.tensor(0.5)}
    terms = col.losses(outputs, VAL)

    col.record(epoch, VAL, outputs, terms, torch.tensor(3.0), lambda: 4)

    assert epoch.compute() == {"val/loss": 3.0, "val/bce": 1.0, "val/acc": 0.5}


def test_metric_weight_overrides_the_batch_size():
    @metric(outputs="m")
    def weighted(pred: Tensor) -> Metric:
        return Metric(name="m", value=1.0, weight=3)

    col = collector(weighted)
    epoch = EpochAggregate()
    col.record(epoch, VAL, {"m": Metric("m", 1.0, weight=3)}, [], None, lambda: 1)
    col.record(epoch, VAL, {"m": Metric("m", 0.0, weight=1)}, [], None, lambda: 1)

    assert epoch.compute() == {"val/m": 0.75}


def test_batch_size_is_not_asked_for_when_nothing_needs_it():
    def no_size():
        raise AssertionError("batch size requested")

    col = collector(acc)
    col.record(
        EpochAggregate(), VAL, {"acc": Metric("acc", 1.0, weight=2)}, [], None, no_size
    )


def test_metric_entries_of_every_supported_shape():
    assert list(metric_entries("m", None, "n")) == []
    assert list(metric_entries("m", Metric("top", 2.0), "n")) == [("top", 2.0, None)]
    assert list(metric_entries("m", [Metric("a", 1.0, weight=2)], "n")) == [
        ("a", 1.0, 2)
    ]
    assert list(metric_entries("m", {"a": 1.0, "b": Metric("x", 2.0)}, "n")) == [
        ("a", 1.0, None),
        ("b", 2.0, None),
    ]
    assert list(metric_entries("m", 0.5, "n")) == [("m", 0.5, None)]


def test_a_list_of_plain_numbers_is_an_error_naming_node_and_output():
    with pytest.raises(TypeError, match="metric output 'm' of node 'n' is a list"):
        list(metric_entries("m", [1.0, 2.0], "n"))
