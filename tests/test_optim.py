"""Resolving the trainer's optimiser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cuvis_dsl._collect import LossTerm
from cuvis_dsl._optim import check_optimizer_source, resolve_optimizer, step


def term(node: str, value: torch.Tensor, weight: float = 1.0) -> LossTerm:
    return LossTerm(node=node, output=node, key=None, value=value, weight=weight)


def test_callable_gets_only_parameters_that_require_grad():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[0].requires_grad_(False)
    received: list[int] = []

    def build(params):
        received.append(len(params))
        return torch.optim.SGD(params, lr=0.1)

    optimizer = resolve_optimizer(build, net)

    assert received == [2] and isinstance(optimizer, torch.optim.SGD)


def test_none_is_fine_when_nothing_is_trainable():
    net = nn.Linear(2, 2).requires_grad_(False)

    assert resolve_optimizer(None, net) is None


def test_an_optimizer_but_nothing_trainable_is_an_error():
    net = nn.Linear(2, 2).requires_grad_(False)

    with pytest.raises(ValueError, match="no parameter of the pipeline requires grad"):
        resolve_optimizer(lambda params: torch.optim.SGD(params, lr=1), net)


def test_callable_must_return_an_optimizer():
    with pytest.raises(TypeError, match="returned list"):
        resolve_optimizer(lambda params: list(params), nn.Linear(2, 2))


def test_source_must_be_an_optimizer_a_callable_or_none():
    check_optimizer_source(None)
    check_optimizer_source(lambda params: None)
    with pytest.raises(TypeError, match="Fix: optimizer=lambda params"):
        check_optimizer_source(0.1)


def test_step_moves_the_parameters_down_the_loss_gradient():
    weight = torch.tensor(1.0, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.5)

    step(optimizer, 3 * weight, [term("gap", 3 * weight)], ["gap"])

    assert weight.item() == pytest.approx(1.0 - 0.5 * 3)


def test_step_without_a_loss_names_the_loss_nodes():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)

    with pytest.raises(ValueError, match=r"loss nodes: 'bce'\)"):
        step(optimizer, None, [], ["bce"])
    with pytest.raises(ValueError, match=r"loss nodes: \(none\)\)"):
        step(optimizer, None, [], [])


def test_step_on_a_loss_without_grad_names_its_nodes():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)

    with pytest.raises(ValueError, match=r"from 'bce'.*does not depend"):
        step(optimizer, torch.tensor(1.0), [term("bce", torch.tensor(1.0))], ["bce"])


def test_step_with_every_weight_zero_says_so_and_names_the_nodes():
    weight = torch.tensor(1.0, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.5)
    terms = [term("bce", 2 * weight, 0.0), term("dice", weight, 0.0)]

    with pytest.raises(ValueError, match="every loss weight is 0") as caught:
        step(optimizer, torch.zeros(()), terms, ["bce", "dice"])

    assert "of 'bce', 'dice'" in str(caught.value)
    assert "loss_weights={'bce': 1.0}" in str(caught.value)
    assert weight.item() == 1.0
