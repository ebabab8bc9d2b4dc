"""Reading losses and metrics out of a run's outputs, and naming them."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from torch import Tensor

from cuvis_dsl import (
    ExecutionStage,
    Metric,
    Node,
    Pipeline,
    PortSpec,
    loss,
    metric,
    node,
)
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
    by_node = {"bce": {"bce": torch.tensor(2.0)}}
    terms = collector(bce, weights={"bce": 0.5}).losses(by_node, VAL)

    assert [(t.node, t.output, t.key, t.weight) for t in terms] == [
        ("bce", "bce", "val/bce", 0.5)
    ]


def test_a_loss_output_called_loss_is_keyed_by_its_node():
    terms = collector(dice_loss, weights={"dice": 2.0}).losses(
        {"dice": {"loss": torch.tensor(1.0)}}, VAL
    )

    assert [(t.key, t.weight) for t in terms] == [("val/dice", 2.0)]


def test_fan_in_losses_are_keyed_by_node_in_node_name_order():
    @loss(name="b_part", outputs="part")
    def b_part(pred: Tensor) -> Tensor:
        return pred.mean()

    @loss(name="a_part", outputs="part")
    def a_part(pred: Tensor) -> Tensor:
        return pred.sum()

    by_node = {"b_part": {"part": torch.tensor(2.0)}, "a_part": {"part": 1.0}}
    terms = collector(b_part, a_part).losses(by_node, VAL)

    assert [(t.node, t.key, t.value.item()) for t in terms] == [
        ("a_part", "val/a_part", 1.0),
        ("b_part", "val/b_part", 2.0),
    ]


def test_python_number_losses_become_tensors():
    terms = collector(bce).losses({"bce": {"bce": 0.25}}, VAL)

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
    by_node = {"bce": {"bce": torch.tensor(1.0)}, "acc": {"acc": torch.tensor(0.5)}}
    terms = col.losses(by_node, VAL)

    col.record(epoch, VAL, by_node, terms, torch.tensor(3.0), lambda: 4)

    assert epoch.compute() == {"val/loss": 3.0, "val/bce": 1.0, "val/acc": 0.5}


def test_metric_weight_overrides_the_batch_size():
    @metric(outputs="m")
    def weighted(pred: Tensor) -> Metric:
        return Metric(name="m", value=1.0, weight=3)

    col = collector(weighted)
    epoch = EpochAggregate()
    first = {"weighted": {"m": Metric("m", 1.0, weight=3)}}
    second = {"weighted": {"m": Metric("m", 0.0, weight=1)}}
    col.record(epoch, VAL, first, [], None, lambda: 1)
    col.record(epoch, VAL, second, [], None, lambda: 1)

    assert epoch.compute() == {"val/m": 0.75}


def test_batch_size_is_not_asked_for_when_nothing_needs_it():
    def no_size():
        raise AssertionError("batch size requested")

    col = collector(acc)
    by_node = {"acc": {"acc": Metric("acc", 1.0, weight=2)}}
    col.record(EpochAggregate(), VAL, by_node, [], None, no_size)


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


@loss(name="loss")
def named_loss(pred: Tensor) -> Tensor:
    return pred.mean()


def test_the_only_loss_named_loss_with_weight_one_is_the_total_itself():
    terms = collector(named_loss).losses({"loss": {"loss": torch.tensor(2.0)}}, VAL)

    assert [(t.node, t.key, t.weight) for t in terms] == [("loss", None, 1.0)]


@pytest.mark.parametrize(
    ("nodes", "weights"),
    [((named_loss, bce), {}), ((named_loss,), {"loss": 0.5})],
    ids=["next-to-another-loss", "weighted"],
)
def test_a_loss_named_loss_is_keyed_under_the_total_by_its_node(nodes, weights):
    by_node = {"loss": {"loss": torch.tensor(2.0)}, "bce": {"bce": torch.tensor(1.0)}}
    by_node = {name: by_node[name] for name in ("loss", "bce")[: len(nodes)]}

    terms = collector(*nodes, weights=weights).losses(by_node, VAL)

    assert {t.node: t.key for t in terms}["loss"] == "val/loss/loss"


class Scores(Node):
    """A class-form node whose outputs are undeclared."""

    def forward(self, pred, **_):
        return {"score": pred.mean()}


class OtherScores(Node):
    def forward(self, pred, **_):
        return {"score": pred.max()}


def test_one_undeclared_metric_key_from_two_nodes_is_logged_under_each_node():
    pipe = Pipeline([pred, metric(Scores)(), metric(OtherScores)()])
    col = Collector(pipe.specs, {})
    epoch = EpochAggregate()

    by_node = pipe.forward_by_node(batch={"x": torch.tensor([1.0, 3.0])}, stage="val")
    col.record(epoch, VAL, by_node, [], None, lambda: 2)

    assert epoch.compute() == {"val/scores": 2.0, "val/other_scores": 3.0}


@node(outputs="pred")
def sharpen(pred: Tensor) -> Tensor:
    return 2 * pred


@node(outputs="part")
def left(pred: Tensor) -> Tensor:
    return pred.sum()


@node(outputs="part")
def right(pred: Tensor) -> Tensor:
    return pred.max()


@node
def combine(part: Annotated[list[Tensor], PortSpec(variadic=True)]) -> Tensor:
    return torch.stack(part).sum()
