"""C02: two producers of one name, including anonymous lambdas, never shadow."""

import _c02_features_a as features_a
import _c02_features_b as features_b
import pytest
import torch
from torch import Tensor

from cuvis_dsl import DefinitionError, DuplicateOutputError, Pipeline, WiringError, node


@node
def head(features: Tensor) -> Tensor:
    return features


def test_two_functions_with_one_name_are_rejected_naming_both_modules():
    with pytest.raises(DuplicateOutputError) as info:
        Pipeline([features_a.features, features_b.features, head])
    message = str(info.value)
    assert "two nodes are named 'features'" in message
    assert "_c02_features_a.features" in message
    assert "_c02_features_b.features" in message
    assert info.value.problems[0].node == "features"


def test_renamed_producers_of_one_output_are_rejected_naming_both():
    first = node(features_a.features, name="features_mean", outputs="features")
    second = node(features_b.features, name="features_max", outputs="features")
    with pytest.raises(DuplicateOutputError) as info:
        Pipeline([first, second, head])
    (problem,) = info.value.problems
    assert (problem.kind, problem.node, problem.port) == (
        "duplicate",
        "head",
        "features",
    )
    message = str(info.value)
    assert "output 'features' has 2 producers" in message
    assert "'features_max' = _c02_features_b.features" in message
    assert "'features_mean' = _c02_features_a.features" in message


def test_without_a_consumer_neither_producer_wins():
    first = node(features_a.features, name="features_mean", outputs="features")
    second = node(features_b.features, name="features_max", outputs="features")
    cube = torch.tensor([[1.0, 3.0]])
    out = Pipeline([second, first]).forward(batch={"cube": cube}, stage="val")
    assert [value.item() for value in out["features"]] == [3.0, 2.0]


def test_unnamed_lambdas_are_rejected_with_a_fix():
    with pytest.raises(DefinitionError, match=r"name='<a name>'\)") as info:
        node(lambda x: x * 2)
    assert info.value.node == "<lambda>"
    assert isinstance(info.value, TypeError)


def test_named_lambdas_each_compute_their_own_value():
    double = node(lambda x: x * 2, name="double")
    triple = node(lambda x: x * 3, name="triple")

    @node
    def both(double, triple):
        return (double, triple)

    out = Pipeline([double, triple, both]).forward(batch={"x": 1}, stage="val")
    assert (out["double"], out["triple"], out["both"]) == (2, 3, (2, 3))


def test_lambdas_given_one_name_are_rejected():
    with pytest.raises(WiringError, match="two nodes are named 'f'"):
        Pipeline([node(lambda x: x * 2, name="f"), node(lambda x: x * 3, name="f")])
