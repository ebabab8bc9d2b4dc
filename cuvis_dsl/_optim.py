"""The trainer's optimiser: given as an object, or built from the parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._collect import LossTerm
from ._errors import quoted

__all__ = ["OptimizerLike", "check_optimizer_source", "resolve_optimizer", "step"]

OptimizerLike = torch.optim.Optimizer | Callable[[list[torch.nn.Parameter]], Any]


def is_optimizer(value: object) -> bool:
    return isinstance(value, torch.optim.Optimizer)


def check_optimizer_source(optimizer: object) -> None:
    """Raise unless ``optimizer`` is None, an Optimizer or a callable."""
    if optimizer is None or callable(optimizer) or is_optimizer(optimizer):
        return
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a callable "
        f"params -> Optimizer, got {type(optimizer).__name__}.\n"
        f"  Fix: optimizer=lambda params: torch.optim.Adam(params, lr=1e-3)"
    )


def resolve_optimizer(
    source: OptimizerLike | None, pipeline: torch.nn.Module
) -> torch.optim.Optimizer | None:
    """The optimiser over ``pipeline``'s trainable parameters.

    A given Optimizer must hold only parameters of the pipeline; a callable
    is called with the parameters that require grad now. None is accepted
    only when no parameter requires grad.
    """
    if is_optimizer(source):
        _check_params(source, pipeline)  # type: ignore[arg-type]
        return source  # type: ignore[return-value]
    trainable = [p for p in pipeline.parameters() if p.requires_grad]
    if source is None:
        if trainable:
            raise ValueError(
                f"the pipeline has {len(trainable)} parameter tensor(s) that "
                f"require grad, but the trainer has no optimiser.\n  Fix: "
                f"Trainer(pipe, optimizer=lambda params: "
                f"torch.optim.Adam(params, lr=1e-3))"
            )
        return None
    if not trainable:
        raise ValueError(
            "an optimiser was given, but no parameter of the pipeline requires "
            "grad.\n  Fix: drop the optimiser, or unfreeze the parameters "
            "(requires_grad=True)"
        )
    built = source(trainable)  # type: ignore[operator]
    if not is_optimizer(built):
        raise TypeError(
            f"the optimizer callable returned {type(built).__name__}, not a "
            f"torch.optim.Optimizer.\n  Fix: return the optimiser, e.g. "
            f"lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    return built  # type: ignore[no-any-return]


def step(
    optimizer: torch.optim.Optimizer,
    total: torch.Tensor | None,
    terms: Sequence[LossTerm],
    loss_nodes: Sequence[str],
) -> None:
    """Back-propagate one TRAIN batch's total loss and take an optimiser step.

    ``terms`` are the weighted losses that make up ``total``,
    ``loss_nodes`` every loss node of the pipeline (named in errors).
    """
    if total is None:
        known = quoted(loss_nodes) if loss_nodes else "(none)"
        raise ValueError(
            f"no loss node produced a value in stage TRAIN, so there is "
            f"nothing to back-propagate (loss nodes: {known}).\n"
            f"  Fix: add a @loss node that runs in TRAIN"
        )
    nodes = sorted({term.node for term in terms})
    if terms and all(term.weight == 0 for term in terms):
        raise ValueError(
            f"every loss weight is 0 for the TRAIN losses of {quoted(nodes)}, "
            f"so the total loss is 0 and there is nothing to back-propagate.\n"
            f"  Fix: give at least one loss a non-zero weight, e.g. "
            f"loss_weights={{{terms[0].output!r}: 1.0}}"
        )
    if not total.requires_grad:
        raise ValueError(
            f"the TRAIN loss (from {quoted(nodes)}) does not depend on any "
            f"parameter that requires grad.\n  Fix: check that the trainable "
            f"nodes feed the loss, and that no node detaches its output"
        )
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def _check_params(optimizer: torch.optim.Optimizer, pipeline: torch.nn.Module) -> None:
    owned = {id(p) for p in pipeline.parameters()}
    foreign = sum(
        1
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) not in owned
    )
    if foreign:
        raise ValueError(
            f"the optimiser holds {foreign} parameter tensor(s) that are not "
            f"parameters of the pipeline, so training would not change it.\n"
            f"  Fix: build the optimiser from pipe.parameters(), or pass a "
            f"callable: optimizer=lambda params: torch.optim.Adam(params)"
        )
