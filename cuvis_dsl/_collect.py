"""Reading loss and metric values out of a pipeline run's outputs."""

from __future__ import annotations

import itertools
import math
import numbers
from collections import Counter
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
    """One loss value of one batch: where it came from and how it is weighted.

    ``key`` is None for a loss that is the total itself (see `Collector`).
    """

    node: str
    output: str
    key: str | None
    value: torch.Tensor
    weight: float


class Collector:
    """Reads the loss and metric values out of a pipeline run, node by node.

    It reads what `Pipeline.forward_by_node` returns, so every value is
    attributed to the node that produced it. Losses are the outputs of
    loss-role nodes; metrics are the outputs of metric-role nodes, and any
    `Metric` (or list of them) that another node returns, as the cuvis.ai
    pattern of a plain ``Node`` reporting ``{"metrics": [Metric(...)]}``
    does. Nodes whose outputs are undeclared count with what they return.

    ``"<stage>/loss"`` is the weighted total of the losses. Every other
    value is logged under ``"<stage>/<output>"``; when several nodes of a
    role produce the same output name, or a loss output is called
    ``loss``, under ``"<stage>/<node>"`` instead. A loss that would so be
    logged as ``"<stage>/loss"`` (a loss node named ``loss``) is the total
    itself when it is the batch's only loss and weighs 1; next to other
    losses, or with another weight, it is logged as
    ``"<stage>/loss/<node>"``. Metric objects bring their own names.
    """

    def __init__(
        self, specs: Mapping[str, NodeSpec], loss_weights: Mapping[str, float]
    ) -> None:
        self._specs = specs
        self._shared = {role: _shared_outputs(specs, role) for role in ROLES}
        self.loss_nodes = _nodes_of(specs, "loss")
        self.metric_nodes = _nodes_of(specs, "metric")
        self._weights = _checked_weights(loss_weights, specs, self.loss_nodes)

    def _sources(
        self, role: str, by_node: Mapping[str, Mapping[str, Any]]
    ) -> Iterator[tuple[str, str, Any, bool]]:
        """``(node, output, value, shared)`` for every output of ``role``'s nodes."""
        nodes = [n for n in sorted(by_node) if self._specs[n].role == role]
        counts = Counter(output for n in nodes for output in by_node[n])
        for node in nodes:
            for output, value in by_node[node].items():
                shared = output in self._shared[role] or counts[output] > 1
                yield node, str(output), value, shared

    def losses(
        self, by_node: Mapping[str, Mapping[str, Any]], stage: ExecutionStage
    ) -> list[LossTerm]:
        """The loss values of one run, each checked to be a scalar."""
        terms = []
        for node, output, value, shared in self._sources("loss", by_node):
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
        return _apart_from_total(terms, log_key(stage, "loss"))

    def record(
        self,
        aggregate: EpochAggregate,
        stage: ExecutionStage,
        by_node: Mapping[str, Mapping[str, Any]],
        terms: list[LossTerm],
        total: torch.Tensor | None,
        size: Callable[[], int],
    ) -> None:
        """Add one batch's losses and metrics to the epoch's aggregate."""
        seen: dict[str, str] = {}
        if total is not None:
            value = total.detach().to(torch.float64)
            _add(aggregate, seen, log_key(stage, "loss"), value, size(), "")
        for term in terms:
            if term.key is not None:
                value = term.value.detach().to(torch.float64)
                _add(aggregate, seen, term.key, value, size(), term.node)
        metrics = self._sources("metric", by_node)
        others = (
            source
            for source in self._sources("node", by_node)
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


def _apart_from_total(terms: list[LossTerm], total_key: str) -> list[LossTerm]:
    """Terms whose key is the total's: the total itself, or keyed apart."""
    if len(terms) == 1 and terms[0].key == total_key and terms[0].weight == 1:
        return [attrs.evolve(terms[0], key=None)]
    return [
        attrs.evolve(term, key=f"{total_key}/{term.node}")
        if term.key == total_key
        else term
        for term in terms
    ]


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


def _nodes_of(specs: Mapping[str, NodeSpec], role: str) -> tuple[str, ...]:
    return tuple(sorted(name for name, spec in specs.items() if spec.role == role))


def _shared_outputs(specs: Mapping[str, NodeSpec], role: str) -> frozenset[str]:
    """Output names that several nodes of ``role`` declare."""
    counts = Counter(
        output
        for spec in specs.values()
        if spec.role == role
        for output in spec.output_names
    )
    return frozenset(output for output, count in counts.items() if count > 1)


def _checked_weights(
    weights: Mapping[str, float],
    specs: Mapping[str, NodeSpec],
    loss_nodes: tuple[str, ...],
) -> dict[str, float]:
    outputs = {output for node in loss_nodes for output in specs[node].output_names}
    known = outputs | set(loss_nodes)
    for key, weight in weights.items():
        if key not in known:
            raise ValueError(
                f"loss_weights names {key!r}, which is neither a loss output nor "
                f"a loss node.{did_you_mean(key, known)} Loss outputs: "
                f"{quoted(sorted(outputs)) if outputs else '(none)'}.\n  Fix: key "
                f"the weights by loss output name (by node name for a node whose "
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
