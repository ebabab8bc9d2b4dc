"""Reading loss and metric values out of a pipeline run's outputs."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import torch

from ._aggregate import EpochAggregate, as_scalar, is_stateful_metric, log_key
from ._errors import did_you_mean, quoted
from ._metric import Metric
from ._ports import summarize
from ._spec import NodeSpec
from ._stages import ExecutionStage

__all__ = ["Collector", "LossTerm", "metric_entries"]

ROLES = ("loss", "metric", "node")


def metric_entries(
    output: str, value: Any, node: str
) -> Iterator[tuple[str, Any, float | None]]:
    """``(name, scalar, weight)`` for every value a metric output holds.

    Stateful metrics are not entries; the caller checks for them first.
    """
    if value is None:
        return
    if isinstance(value, Metric):
        yield value.name, value.value, value.weight
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, Metric):
                raise TypeError(
                    f"metric output {output!r} of node {node!r} is a list "
                    f"holding {summarize(item)}; a list may hold only Metric "
                    f"objects.\n  Fix: return [Metric(name, value), ...]"
                )
            yield item.name, item.value, item.weight
    elif isinstance(value, Mapping):
        for name, item in value.items():
            if isinstance(item, Metric):
                yield str(name), item.value, item.weight
            else:
                what = f"metric {name!r} of output {output!r} of node {node!r}"
                yield str(name), as_scalar(item, what), None
    else:
        yield (
            output,
            as_scalar(value, f"metric output {output!r} of node {node!r}"),
            None,
        )


@attrs.frozen
class LossTerm:
    """One loss value of one batch: where it came from and how it is weighted."""

    node: str
    output: str
    key: str
    value: torch.Tensor
    weight: float


class Collector:
    """Reads the loss and metric values out of a pipeline run's outputs.

    Losses are the outputs of loss-role nodes; metrics are the outputs of
    metric-role nodes, and any `Metric` (or list of them) that another
    node returns, as the cuvis.ai pattern of a plain ``Node`` reporting
    ``{"metrics": [Metric(...)]}`` does. The values of a node whose
    outputs are undeclared are read from what it returns (``captured``).

    A value is logged under ``"<stage>/<output>"``; when several nodes
    produce the same output name (fan-in), or the output is called
    ``loss`` (the name of the weighted total), under ``"<stage>/<node>"``
    instead. Metric objects bring their own names.
    """

    def __init__(
        self, specs: Mapping[str, NodeSpec], loss_weights: Mapping[str, float]
    ) -> None:
        self._specs = specs
        self._tables = {role: _producers(specs, role) for role in ROLES}
        self.undeclared = tuple(
            sorted(name for name, spec in specs.items() if spec.returns == "undeclared")
        )
        loss_nodes = {n for n in self.undeclared if specs[n].role == "loss"}
        self._weights = _checked_weights(loss_weights, self._tables["loss"], loss_nodes)

    @property
    def loss_nodes(self) -> tuple[str, ...]:
        return self._nodes("loss")

    @property
    def metric_nodes(self) -> tuple[str, ...]:
        return self._nodes("metric")

    def _nodes(self, role: str) -> tuple[str, ...]:
        declared = {n for nodes in self._tables[role].values() for n in nodes}
        hidden = {n for n in self.undeclared if self._specs[n].role == role}
        return tuple(sorted(declared | hidden))

    def _sources(
        self,
        role: str,
        outputs: Mapping[str, Any],
        stage: ExecutionStage,
        captured: Mapping[str, Any],
    ) -> Iterator[tuple[str, str, Any, bool]]:
        """``(node, output, value, shared)`` for every value of ``role``."""
        for output, nodes in self._tables[role].items():
            if output not in outputs:
                continue
            running = [n for n in nodes if stage in self._specs[n].stages]
            value = outputs[output]
            shared = len(nodes) > 1
            if shared and isinstance(value, list) and len(value) == len(running):
                for node, item in zip(running, value):
                    yield node, output, item, True
            elif running:
                yield running[0], output, value, shared
        for node in self.undeclared:
            returned = captured.get(node)
            if self._specs[node].role == role and isinstance(returned, Mapping):
                for output, value in returned.items():
                    yield node, str(output), value, False

    def losses(
        self,
        outputs: Mapping[str, Any],
        stage: ExecutionStage,
        captured: Mapping[str, Any] | None = None,
    ) -> list[LossTerm]:
        """The loss values of one run, each checked to be a scalar."""
        terms = []
        for node, output, value, shared in self._sources(
            "loss", outputs, stage, captured or {}
        ):
            if value is None:
                continue
            name = node if shared or output == "loss" else output
            terms.append(
                LossTerm(
                    node=node,
                    output=output,
                    key=log_key(stage, name),
                    value=_loss_tensor(value, node, output),
                    weight=self._weights.get(output, self._weights.get(node, 1.0)),
                )
            )
        return terms

    def record(
        self,
        aggregate: EpochAggregate,
        stage: ExecutionStage,
        outputs: Mapping[str, Any],
        terms: list[LossTerm],
        total: torch.Tensor | None,
        size: Callable[[], int],
        captured: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one batch's losses and metrics to the epoch's aggregate."""
        seen: dict[str, str] = {}
        if total is not None:
            value = total.detach().to(torch.float64)
            _add(aggregate, seen, log_key(stage, "loss"), value, size(), "")
        for term in terms:
            value = term.value.detach().to(torch.float64)
            _add(aggregate, seen, term.key, value, size(), term.node)
        captured = captured or {}
        metrics = self._sources("metric", outputs, stage, captured)
        others = (
            source
            for source in self._sources("node", outputs, stage, captured)
            if _holds_metrics(source[2])
        )
        for node, output, value, shared in itertools.chain(metrics, others):
            label = node if shared else output
            if is_stateful_metric(value):
                aggregate.add_stateful(log_key(stage, label), value, node)
                continue
            for name, scalar, weight in metric_entries(label, value, node):
                count = size() if weight is None else weight
                _add(aggregate, seen, log_key(stage, name), scalar, count, node)


def _holds_metrics(value: Any) -> bool:
    if isinstance(value, Metric):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(item, Metric) for item in value)
    )


def _add(
    aggregate: EpochAggregate,
    seen: dict[str, str],
    key: str,
    value: Any,
    weight: float,
    node: str,
) -> None:
    if key in seen:
        raise ValueError(
            f"two values of one batch are both logged as {key!r} (from "
            f"{_source(seen[key])} and {_source(node)}).\n  Fix: give the "
            f"metrics or loss outputs distinct names"
        )
    seen[key] = node
    aggregate.add(key, value, weight)


def _source(node: str) -> str:
    return "the total loss" if node == "" else f"node {node!r}"


def _producers(specs: Mapping[str, NodeSpec], role: str) -> dict[str, tuple[str, ...]]:
    table: dict[str, list[str]] = {}
    for name in sorted(specs):
        spec = specs[name]
        if spec.role != role or spec.returns == "undeclared":
            continue
        for output in spec.output_names:
            table.setdefault(output, []).append(name)
    return {output: tuple(nodes) for output, nodes in table.items()}


def _checked_weights(
    weights: Mapping[str, float],
    losses: dict[str, tuple[str, ...]],
    undeclared: set[str],
) -> dict[str, float]:
    known = set(losses) | {node for nodes in losses.values() for node in nodes}
    known |= undeclared
    for key, weight in weights.items():
        if key not in known:
            raise ValueError(
                f"loss_weights names {key!r}, which is neither a loss output nor "
                f"a loss node.{did_you_mean(key, known)} Loss outputs: "
                f"{quoted(losses) if losses else '(none)'}.\n  Fix: key the "
                f"weights by loss output name (by node name for a node whose "
                f"outputs are undeclared)"
            )
        if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ValueError(
                f"loss_weights[{key!r}] = {weight!r} is not a finite number"
            )
    return {key: float(weight) for key, weight in weights.items()}


def _loss_tensor(value: Any, node: str, output: str) -> torch.Tensor:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(
            f"loss output {output!r} of node {node!r} is {summarize(value)}; a "
            f"loss must be a scalar tensor.\n  Fix: reduce it in the node, e.g. "
            f"return losses.mean()"
        )
    return value.reshape(())
