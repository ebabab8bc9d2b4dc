"""Running batches through a pipeline in one stage, with the right modes.

TRAIN batches run in train mode with autograd; VAL, TEST and INFERENCE
batches run in eval mode under ``torch.no_grad()`` (not inference mode, so
that their outputs can still be used in autograd later). `preserved_modes`
puts every module's mode and the grad mode back afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from tqdm import tqdm

from ._aggregate import BatchSize, EpochAggregate, batch_size_of, is_stateful_metric
from ._collect import Collector, LossTerm
from ._context import Context
from ._errors import CuvisDSLWarning, quoted
from ._stages import ExecutionStage
from ._statistical import Batches

__all__ = [
    "BatchRun",
    "NonFiniteLossError",
    "SharedEvalMode",
    "StageLoop",
    "preserved_modes",
]

TRAIN = ExecutionStage.TRAIN


class NonFiniteLossError(FloatingPointError):
    """A TRAIN loss was NaN or infinite; training stopped before the step.

    Attributes
    ----------
    node, output
        The loss node and its output that was not finite.
    stage, epoch, global_step
        Where training stood.
    value
        The offending value.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        output: str,
        epoch: int,
        global_step: int,
        value: float,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.output = output
        self.stage = TRAIN
        self.epoch = epoch
        self.global_step = global_step
        self.value = value


@contextlib.contextmanager
def preserved_modes(module: torch.nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval mode and the grad mode on exit.

    The modes are restored exactly, module by module, also when the block
    raises.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    >>> net[1].eval()
    Dropout(p=0.5, inplace=False)
    >>> with preserved_modes(net):
    ...     _ = net.train()
    >>> net[0].training, net[1].training
    (True, False)
    """
    modes = [(child, child.training) for child in module.modules()]
    grad = torch.is_grad_enabled()
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training
        torch.set_grad_enabled(grad)


class SharedEvalMode:
    """Eval mode for evaluation calls that may overlap in several threads.

    The first call to enter saves every module's train/eval mode and puts
    the module in eval mode; the last one to leave restores the saved
    modes. Calls that each saved and restored the modes on their own would
    restore train mode while another call is still running. The grad mode
    is per thread in torch, so each call keeps its own.

    Examples
    --------
    >>> net = torch.nn.Dropout()
    >>> shared = SharedEvalMode(net)
    >>> with shared(), shared():
    ...     net.training
    False
    >>> net.training
    True
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._users = 0
        self._saved: list[tuple[torch.nn.Module, bool]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = [(m, m.training) for m in self._module.modules()]
                self._module.eval()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for child, training in self._saved:
                        child.training = training


class LazySize:
    """The batch size, inferred only when a value needs weighting."""

    def __init__(self, batch: Mapping[str, Any], rule: BatchSize) -> None:
        self._batch = batch
        self._rule = rule
        self._size: int | None = None

    def __call__(self) -> int:
        if self._size is None:
            self._size = batch_size_of(self._batch, self._rule)
        return self._size


@attrs.frozen
class BatchRun:
    """One batch's run: its outputs by name and by node, the loss terms and total."""

    stage: ExecutionStage
    batch: Mapping[str, Any]
    outputs: dict[str, Any]
    by_node: dict[str, dict[str, Any]]
    terms: list[LossTerm]
    total: torch.Tensor | None


class StageLoop:
    """Runs batches through a pipeline and aggregates their losses and metrics.

    It builds the `Context` of every batch, moves batches to the device,
    sums the weighted losses (checking TRAIN losses for NaN and inf),
    records losses and metrics into an `EpochAggregate`, and keeps the
    stateful metrics that the metric nodes hold or have returned, so that
    each run starts them afresh.
    """

    def __init__(
        self,
        pipeline: Any,
        collector: Collector,
        *,
        batch_size: BatchSize,
        device: torch.device | None,
        progress: bool,
        check_finite: bool,
    ) -> None:
        self.pipeline = pipeline
        self.collector = collector
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.check_finite = check_finite
        self._stateful = _discover_stateful(pipeline, collector.metric_nodes)
        self.eval_mode = SharedEvalMode(pipeline)

    def run(
        self, batch: Any, context: Context, aggregate: EpochAggregate | None = None
    ) -> BatchRun:
        """Run one batch and sum its weighted losses; record them if asked."""
        prepared = self.prepare(batch)
        outputs, by_node = self.pipeline.run_views(
            prepared, context, None, None, None, view="both"
        )
        terms = self.collector.losses(by_node, context.stage)
        total = self._total(terms, context)
        result = BatchRun(context.stage, batch, outputs, by_node, terms, total)
        if aggregate is not None:
            self.record(aggregate, result)
        return result

    def record(self, aggregate: EpochAggregate, run: BatchRun) -> None:
        """Add a batch's losses and metrics to the epoch's aggregate."""
        self.collector.record(
            aggregate,
            run.stage,
            run.by_node,
            run.terms,
            run.total,
            LazySize(run.batch, self.batch_size),
        )

    def _total(self, terms: list[LossTerm], context: Context) -> torch.Tensor | None:
        used = [term for term in terms if term.weight != 0]
        if not used:
            return torch.zeros(()) if terms else None
        total = torch.stack([term.weight * term.value for term in used]).sum()
        if self.check_finite and context.stage is TRAIN:
            _check_finite(total, used, context)
        return total

    def evaluate(
        self, stage: ExecutionStage, batches: Batches, epoch: int, global_step: int
    ) -> dict[str, float]:
        """Run every batch in ``stage``, eval mode, no grad; return epoch values."""
        aggregate = EpochAggregate()
        self.reset_stateful()
        self.pipeline.eval()
        count = 0
        with torch.no_grad():
            for batch_idx, batch in enumerate(self.bar(batches, stage.value)):
                context = Context(stage, epoch, batch_idx, global_step)
                self.run(batch, context, aggregate)
                count += 1
        if count == 0:
            warnings.warn(
                f"stage {stage.name} skipped: the {batches.role} batches are "
                f"empty, so no {stage.value} values are reported",
                CuvisDSLWarning,
                stacklevel=4,
            )
            return {}
        return self.finish(aggregate, stage)

    def predict(
        self,
        batches: Batches,
        epoch: int,
        global_step: int,
        outputs: str | Sequence[str] | None,
    ) -> list[dict[str, Any]]:
        """Every batch's outputs in INFERENCE, eval mode, no grad."""
        results = []
        self.pipeline.eval()
        with torch.no_grad():
            for batch_idx, batch in enumerate(self.bar(batches, "predict")):
                context = Context(
                    ExecutionStage.INFERENCE, epoch, batch_idx, global_step
                )
                results.append(
                    self.pipeline.forward(
                        batch=self.prepare(batch), context=context, outputs=outputs
                    )
                )
        return results

    def finish(
        self, aggregate: EpochAggregate, stage: ExecutionStage
    ) -> dict[str, float]:
        """The epoch values; stateful metrics are computed, then reset."""
        values = aggregate.compute()
        aggregate.reset_stateful()
        for metric in aggregate.stateful:
            self._stateful.setdefault(id(metric), metric)
        empty = aggregate.empty_keys()
        if empty:
            warnings.warn(
                f"{quoted(empty)} saw zero samples in stage {stage.name} and "
                f"are not reported",
                CuvisDSLWarning,
                stacklevel=4,
            )
        return values

    def reset_stateful(self) -> None:
        """Reset every stateful metric met so far, before a new run."""
        for metric in self._stateful.values():
            metric.reset()

    def prepare(self, batch: Any) -> Any:
        """Check that the batch is a dict; move its tensors to the device."""
        _check_batch(batch)
        if self.device is None:
            return batch
        return _to_device(batch, self.device)

    def check_plan(self, stage: ExecutionStage, batches: Batches) -> None:
        """Plan ``stage`` for the keys of the first batch; wiring errors raise here.

        The trainer calls this before training, so that a wiring problem
        of any stage it will run (a typo in a metric's port, say) surfaces
        at once rather than after a whole epoch.
        """
        first = batches.first()
        if first is None:
            return
        _check_batch(first)
        self.pipeline.plan(stage, batch=first)

    def bar(
        self, iterable: Iterable[Any], label: str, sized: Any = None, start: int = 0
    ) -> Iterable[Any]:
        """``iterable`` with a progress bar, unless progress bars are off.

        The bar is shown only when stderr is a terminal (tqdm's
        ``disable=None``), so that logs and CI output stay free of bars.
        """
        if not self.progress:
            return iterable
        total = _length(sized if sized is not None else iterable)
        return tqdm(
            iterable,
            desc=label,
            total=None if total is None else total - start,
            leave=False,
            dynamic_ncols=True,
            disable=None,
        )


def _check_batch(batch: Any) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"a batch must be a dict of names to values, got "
            f"{type(batch).__name__}.\n  Fix: make the dataset or collate "
            f"function return dicts, e.g. {{'cube': x, 'label': y}}"
        )


def _check_finite(total: torch.Tensor, terms: list[LossTerm], context: Context) -> None:
    if bool(torch.isfinite(total)):
        return
    bad = next((t for t in terms if not bool(torch.isfinite(t.value))), terms[0])
    value = float(bad.value.detach())
    raise NonFiniteLossError(
        f"loss {bad.output!r} of node {bad.node!r} is {value} in stage TRAIN, "
        f"epoch {context.epoch}, batch_idx {context.batch_idx}, global step "
        f"{context.global_step}; training stopped before the optimiser step.\n"
        f"  Fix: lower the learning rate, check the node's inputs for NaN, or "
        f"pass Trainer(..., check_finite=False) to train on regardless",
        node=bad.node,
        output=bad.output,
        epoch=context.epoch,
        global_step=context.global_step,
        value=value,
    )


def _discover_stateful(pipeline: Any, metric_nodes: Sequence[str]) -> dict[int, Any]:
    """The stateful metrics that metric module nodes hold, found before any run.

    A node may be one itself, or hold one as a submodule or as a plain
    attribute. Others (one a function node returns from elsewhere) are
    known once a run has returned them.
    """
    found: dict[int, Any] = {}
    for name in metric_nodes:
        item = pipeline.nodes[name]
        if not isinstance(item, torch.nn.Module):
            continue
        for child in item.modules():
            for candidate in (child, *vars(child).values()):
                if is_stateful_metric(candidate):
                    found[id(candidate)] = candidate
    return found


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(item, device) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
