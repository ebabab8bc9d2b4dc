"""Epoch values of losses and metrics: sample-weighted means and stateful metrics.

An epoch value is the mean over *samples*, not over batches: every batch
adds ``value * n`` to a sum and ``n`` to a weight, where ``n`` is the
batch size (or `Metric.weight`). A short last batch therefore counts for
what it holds. Metrics that do not decompose into per-batch means (AUROC,
average precision) come as stateful objects with ``update``, ``compute``
and ``reset``; they are computed once over the whole run and reset.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from ._errors import quoted
from ._metric import Metric
from ._ports import summarize
from ._stages import ExecutionStage

__all__ = [
    "BatchSize",
    "EpochAggregate",
    "StatefulMetric",
    "as_scalar",
    "batch_size_of",
    "is_stateful_metric",
    "log_key",
]

BatchSize = str | Callable[[Mapping[str, Any]], int] | None


@runtime_checkable
class StatefulMetric(Protocol):
    """A metric that accumulates over batches (the torchmetrics protocol)."""

    def update(self, *args: Any, **kwargs: Any) -> Any: ...
    def compute(self) -> Any: ...
    def reset(self) -> Any: ...


def is_stateful_metric(value: object) -> bool:
    """Whether ``value`` has callable ``update``, ``compute`` and ``reset``."""
    return all(
        callable(getattr(value, method, None))
        for method in ("update", "compute", "reset")
    )


def log_key(stage: ExecutionStage, name: str) -> str:
    """``"val/accuracy"``: the name prefixed by its stage unless it already is."""
    prefix = f"{stage.value}/"
    return name if name.startswith(prefix) else prefix + name


def _leading(value: object) -> int | None:
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return int(shape[0])


def batch_size_of(batch: Mapping[str, Any], rule: BatchSize = None) -> int:
    """The number of samples in ``batch``.

    Parameters
    ----------
    batch
        The batch as given to the trainer.
    rule
        None: the leading dimension shared by every array-like value of the
        batch (values without a leading dimension are ignored). A string:
        the leading dimension of that batch key. A callable: its result.

    Examples
    --------
    >>> batch_size_of({"cube": torch.zeros(4, 8), "label": torch.zeros(4)})
    4
    >>> batch_size_of({"cube": torch.zeros(4, 8), "bands": torch.zeros(8)}, "cube")
    4
    """
    if callable(rule):
        return _checked_size(rule(batch), "the batch_size callable")
    if isinstance(rule, str):
        return _size_of_key(batch, rule)
    sizes = {
        key: n for key, value in batch.items() if (n := _leading(value)) is not None
    }
    if not sizes:
        raise ValueError(
            f"cannot infer the batch size: no value of the batch has a leading "
            f"dimension (keys: {quoted(batch)}); epoch means are weighted by "
            f"the number of samples.\n"
            f"  Fix: Trainer(..., batch_size=lambda batch: ...), or report "
            f"metrics as Metric(..., weight=n)"
        )
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{key}={n}" for key, n in sorted(sizes.items()))
        first = min(sizes)
        raise ValueError(
            f"cannot infer the batch size: the leading dimensions of the batch "
            f"values differ ({shown}).\n"
            f"  Fix: name the key that holds one sample per row, e.g. "
            f"Trainer(..., batch_size={first!r})"
        )
    return next(iter(sizes.values()))


def _size_of_key(batch: Mapping[str, Any], key: str) -> int:
    if key not in batch:
        raise ValueError(
            f"batch_size={key!r} names no key of the batch (keys: "
            f"{quoted(batch)}).\n  Fix: pass one of the batch keys"
        )
    size = _leading(batch[key])
    if size is None:
        raise ValueError(
            f"batch_size={key!r}: batch[{key!r}] is {summarize(batch[key])}, "
            f"which has no leading dimension.\n  Fix: name a key whose first "
            f"dimension counts the samples"
        )
    return size


def _checked_size(size: object, source: str) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ValueError(f"{source} returned {size!r}; expected an int >= 0")
    return int(size)


def as_scalar(value: Any, what: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{what} is {summarize(value)}, not a scalar.\n"
                f"  Fix: reduce it in the node (e.g. .mean()), or return "
                f"Metric(name, value) objects"
            )
        return value.detach().reshape(()).to(torch.float64)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"{what} is {summarize(value)}; expected a scalar tensor, a number, a "
        f"Metric, a list of them, or an object with update/compute/reset.\n"
        f"  Fix: return one of those from the node"
    )


class EpochAggregate:
    """Sample-weighted means of one stage's values over one epoch.

    Examples
    --------
    >>> epoch = EpochAggregate()
    >>> epoch.add("val/loss", 1.0, weight=2)
    >>> epoch.add("val/loss", 4.0, weight=1)
    >>> epoch.compute()
    {'val/loss': 2.0}
    """

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._weights: dict[str, float] = {}
        self._stateful: dict[str, Any] = {}

    def add(self, key: str, value: Any, weight: float) -> None:
        """Add one batch's ``value``, the mean over ``weight`` samples."""
        if weight < 0:
            raise ValueError(f"the weight of {key!r} is {weight}; expected >= 0")
        self._sums[key] = self._sums.get(key, 0.0) + value * weight
        self._weights[key] = self._weights.get(key, 0.0) + float(weight)

    def add_stateful(self, key: str, metric: Any, node: str) -> None:
        """Remember a stateful metric, computed once when the epoch ends."""
        known = self._stateful.get(key)
        if known is not None and known is not metric:
            raise ValueError(
                f"two different stateful metric objects report {key!r} (the "
                f"second from node {node!r}).\n  Fix: give each metric output "
                f"its own name"
            )
        self._stateful[key] = metric

    @property
    def stateful(self) -> tuple[Any, ...]:
        return tuple(self._stateful.values())

    def __bool__(self) -> bool:
        return bool(self._sums) or bool(self._stateful)

    def compute(self) -> dict[str, float]:
        """Every key's epoch value; keys that saw zero samples are left out."""
        values = {
            key: float(total) / self._weights[key]
            for key, total in self._sums.items()
            if self._weights[key] > 0
        }
        for key, metric in self._stateful.items():
            values.update(_computed(key, metric.compute()))
        return values

    def reset_stateful(self) -> None:
        for metric in self._stateful.values():
            metric.reset()

    def empty_keys(self) -> list[str]:
        """Keys that were reported but weighted by zero samples in total."""
        return [key for key, weight in self._weights.items() if weight == 0]

    def state_dict(self) -> dict[str, Any]:
        """The weighted sums as plain floats (stateful metrics are not saved)."""
        return {
            "sums": {key: float(total) for key, total in self._sums.items()},
            "weights": dict(self._weights),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = dict(state["sums"])
        self._weights = dict(state["weights"])


def _computed(key: str, result: Any) -> dict[str, float]:
    if isinstance(result, Mapping):
        stage = key.split("/", 1)[0] + "/" if "/" in key else ""
        return {
            name if name.startswith(stage) else stage + str(name): _as_float(value, key)
            for name, value in result.items()
        }
    return {key: _as_float(result, key)}


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, Metric):
        return value.value
    return float(as_scalar(value, f"the compute() result of metric {key!r}"))
