"""The two-phase trainer: statistical initialisation, then gradient training."""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._aggregate import BatchSize, EpochAggregate
from ._callbacks import Callback
from ._checkpoint import write_checkpoint
from ._collect import Collector
from ._context import Context
from ._errors import CuvisDSLWarning
from ._history import History
from ._loop import StageLoop, preserved_modes
from ._optim import (
    OptimizerLike,
    check_optimizer_source,
    resolve_optimizer,
    step,
)
from ._resume import (
    EpochPosition,
    LoadedCheckpoint,
    checkpoint_state,
    load_checkpoint_into,
)
from ._stages import ExecutionStage, as_stage
from ._statistical import (
    Batches,
    fit_statistics,
    is_initialized,
    statistical_nodes,
    warn_uninitialized,
)

__all__ = ["Trainer"]

logger = logging.getLogger("cuvis_dsl.trainer")

TRAIN, VAL, TEST, INFERENCE = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
)


class Trainer:
    """Trains a pipeline in two phases, as cuvis.ai does.

    Phase one, `statistical_initialization`, fits every statistical node
    (a module node with a ``statistical_initialization(self, stream)``
    method) from the training batches, upstream nodes first. Phase two,
    `fit`, trains the parameters that require grad with the optimiser:
    every TRAIN batch runs in train mode with autograd, the loss outputs
    (of loss-role nodes) are summed with ``loss_weights`` and
    back-propagated, and after every ``validate_every`` epochs the VAL
    batches run in eval mode under ``torch.no_grad()``.

    Losses and metrics are averaged over the *samples* of an epoch. The
    number of samples in a batch is the leading dimension its tensors
    share (see ``batch_size``); a `Metric` with a ``weight`` counts that
    many. Stateful metrics (objects with ``update``, ``compute`` and
    ``reset``, such as torchmetrics metrics) returned by a metric node are
    computed once over the whole epoch and reset. They are also reset
    when every epoch and every evaluation call starts, so that calls to
    ``forward`` in between leave no trace: a metric node that is one, or
    holds one as a submodule or attribute, from the first call on; one
    that a function node returns from elsewhere, from its first run on.

    Values are keyed ``"<stage>/<name>"``: ``"train/loss"`` is the weighted
    total, each loss output appears unweighted under its own name (under
    its node's name when it is called ``loss`` or shared by several
    nodes), and each metric under its output name or `Metric.name`. A
    `Metric` (or list of them) returned by any node counts as a metric.
    A loss node named ``loss`` is the total itself when it is the only
    loss and weighs 1 (one key, ``"train/loss"``); next to other losses,
    or with another weight, it appears as ``"train/loss/loss"``.

    Whenever a trainer call returns or raises, every module's train/eval
    mode and the grad mode are those from before the call.

    Parameters
    ----------
    pipeline
        The `Pipeline` to train.
    optimizer
        A ``torch.optim.Optimizer`` over the pipeline's parameters, or a
        callable ``params -> Optimizer``, called with the parameters that
        require grad after statistical initialisation (which may create or
        unfreeze some). None is fine when nothing requires grad.
    max_epochs
        Number of epochs `fit` trains for, counted from epoch 0 (a resumed
        run continues up to the same total).
    loss_weights
        Weight per loss output name (or loss node name); 1 by default.
    statistical_stage
        Stage whose wiring computes the statistical initialisation stream
        (TRAIN by default, so TRAIN-only nodes such as augmentations feed
        the statistics as they feed training; cuvis.ai uses INFERENCE).
    check_finite
        Stop with `NonFiniteLossError` when a TRAIN loss is NaN or
        infinite, before the optimiser step.
    progress
        Show tqdm progress bars on stderr when it is a terminal; they stay
        off when stderr is redirected (to a log file, in CI), so no
        partial bars end up in logs. False turns them off everywhere.
    validate_every
        Validate after every n-th epoch.
    callbacks
        `Callback` objects such as `EarlyStopping` and `BestCheckpoint`.
    checkpoint_dir
        When set, ``<checkpoint_dir>/last.pt`` is written after every epoch.
    device
        Device to move the pipeline and every batch's tensors to.
    batch_size
        How to count the samples of a batch: None for the leading dimension
        shared by the batch's tensors, a batch key, or a callable.

    Examples
    --------
    >>> from torch import Tensor, nn
    >>> @node(outputs="scores")
    ... class Scale(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.tensor(0.0))
    ...     def forward(self, x: Tensor) -> Tensor:
    ...         return self.weight * x
    >>> @loss
    ... def mse(scores: Tensor, y: Tensor) -> Tensor:
    ...     return ((scores - y) ** 2).mean()
    >>> pipe = Pipeline([Scale(), mse])
    >>> batches = [{"x": torch.ones(4), "y": torch.full((4,), 2.0)}] * 3
    >>> trainer = Trainer(pipe, lambda p: torch.optim.SGD(p, lr=0.25),
    ...                   max_epochs=2, progress=False)
    >>> history = trainer.fit(batches, val=batches)
    >>> print(history)
    epoch  train/loss  train/mse  val/loss  val/mse
        0      1.7500     1.7500    0.0625   0.0625
        1      0.0273     0.0273    0.0010   0.0010
    >>> trainer.global_step
    6
    """

    def __init__(
        self,
        pipeline: Any,
        optimizer: OptimizerLike | None = None,
        *,
        max_epochs: int = 1,
        loss_weights: Mapping[str, float] | None = None,
        statistical_stage: ExecutionStage | str = TRAIN,
        check_finite: bool = True,
        progress: bool = True,
        validate_every: int = 1,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        batch_size: BatchSize = None,
    ) -> None:
        _check_count("max_epochs", max_epochs, minimum=0)
        _check_count("validate_every", validate_every, minimum=1)
        check_optimizer_source(optimizer)
        self.pipeline = pipeline
        self.max_epochs = max_epochs
        self.statistical_stage = as_stage(statistical_stage)
        self.validate_every = validate_every
        self.callbacks = list(callbacks)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.device = None if device is None else torch.device(device)
        self._loop = StageLoop(
            pipeline,
            Collector(pipeline.specs, loss_weights or {}),
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            check_finite=check_finite,
        )
        self.epoch = 0
        self.global_step = 0
        self.history = History()
        self.should_stop = False
        self._optimizer_source = optimizer
        self._optimizer: torch.optim.Optimizer | None = (
            optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        )
        self._position = EpochPosition()
        self._loaded: LoadedCheckpoint | None = None
        if self.device is not None:
            pipeline.to(self.device)

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser; built by `fit` when a callable was given."""
        return self._optimizer

    def __repr__(self) -> str:
        return (
            f"Trainer(epoch={self.epoch}/{self.max_epochs}, "
            f"global_step={self.global_step}, optimizer="
            f"{type(self._optimizer).__name__ if self._optimizer else None})"
        )

    # Phase one

    def statistical_initialization(self, train_batches: Iterable[Any]) -> list[str]:
        """Fit every statistical node from ``train_batches``; return their names.

        Nodes are fitted upstream first, each from a stream computed by its
        (already fitted) upstream nodes in eval mode without gradients, in
        the trainer's ``statistical_stage``. Every statistical node is
        fitted again, also one that is already initialised.

        Examples
        --------
        >>> from torch import Tensor, nn
        >>> @node(outputs="x")
        ... class Center(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.register_buffer("mean", torch.zeros(()))
        ...     def statistical_initialization(self, stream):
        ...         values = torch.cat([item["x"] for item in stream])
        ...         self.mean = values.mean()
        ...     def forward(self, x: Tensor) -> Tensor:
        ...         return x - self.mean
        >>> center = Center()
        >>> trainer = Trainer(Pipeline([center]), progress=False)
        >>> trainer.statistical_initialization([{"x": torch.tensor([1.0, 3.0])}])
        ['center']
        >>> center.mean
        tensor(2.)
        """
        names = statistical_nodes(self.pipeline, self.statistical_stage)
        self._initialize(names, Batches(train_batches, "train"))
        return names

    def _initialize(self, names: list[str], batches: Batches) -> None:
        if not names:
            return
        with preserved_modes(self.pipeline), torch.no_grad():
            self.pipeline.eval()
            for name in names:
                logger.info("statistical initialisation of node %r", name)
                fit_statistics(
                    self.pipeline,
                    name,
                    batches,
                    self.statistical_stage,
                    self._loop.prepare,
                    wrap=functools.partial(self._loop.bar, label=f"statistics {name}"),
                    global_step=self.global_step,
                )

    def _pending(self) -> list[str]:
        names = statistical_nodes(self.pipeline, self.statistical_stage)
        return [name for name in names if not is_initialized(self.pipeline.nodes[name])]

    # Phase two

    def fit(
        self,
        train: Iterable[Any],
        val: Iterable[Any] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
    ) -> History:
        """Train for ``max_epochs`` epochs and return the `History`.

        Statistical nodes that are not initialised yet are fitted from
        ``train`` first (phase one); then each epoch trains on ``train``
        and, every ``validate_every`` epochs, evaluates ``val``. The
        pipeline's outputs in TRAIN must include at least one loss when an
        optimiser is set.

        Before anything runs, TRAIN is planned for the keys of the first
        training batch and VAL for those of the first validation batch,
        so a wiring error of either stage is raised at once, not after
        an epoch. Looking at the first batches leaves one-shot iterators
        and the random generators as they were.

        Parameters
        ----------
        train
            Training batches: an iterable of dicts, such as a list or a
            DataLoader (iterated once per epoch).
        val
            Validation batches, or None to skip validation.
        resume_from
            A checkpoint to continue from: the pipeline, optimiser,
            counters, history, callbacks and random states are restored, and
            training continues where it stopped (at the next batch of a
            checkpoint taken mid-epoch), up to ``max_epochs``.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> @loss
        ... def gap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ...     return (x - y).abs().mean()
        >>> batches = [{"x": torch.zeros(2), "y": torch.ones(2)}]
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> first = Trainer(Pipeline([gap]), max_epochs=2, checkpoint_dir=folder,
        ...                 progress=False)
        >>> first.fit(batches).epochs
        [0, 1]
        >>> later = Trainer(Pipeline([gap]), max_epochs=3, progress=False)
        >>> later.fit(batches, resume_from=folder / "last.pt").epochs
        [0, 1, 2]
        """
        batches = Batches(train, "train")
        val_batches = None if val is None else Batches(val, "val")
        with preserved_modes(self.pipeline):
            if resume_from is not None:
                self._loaded = load_checkpoint_into(self, resume_from, resuming=True)
            elif self._loaded is not None:
                self._loaded.check_callbacks(self.callbacks)
            if self.epoch >= self.max_epochs:
                _warn_nothing_to_do(self.epoch, self.max_epochs)
                return self.history
            self._reject_empty(batches)
            self._check_plans(batches, val_batches)
            self._initialize(self._pending(), batches)
            self._optimizer = resolve_optimizer(self._optimizer_source, self.pipeline)
            if self._loaded is not None:
                self._loaded.apply(self._optimizer, self._position)
                self._loaded = None
            self._fit_epochs(batches, val_batches)
        return self.history

    def _fit_epochs(self, batches: Batches, val: Batches | None) -> None:
        self.should_stop = False
        logger.info(
            "fit: epochs %d to %d, global step %d",
            self.epoch,
            self.max_epochs - 1,
            self.global_step,
        )
        self._call("on_fit_start")
        while self.epoch < self.max_epochs and not self.should_stop:
            self._run_epoch(batches, val)
        self._call("on_fit_end")

    def _run_epoch(self, batches: Batches, val: Batches | None) -> None:
        epoch = self.epoch
        values = self._train_epoch(batches)
        if val is not None and (epoch + 1) % self.validate_every == 0:
            values.update(self._loop.evaluate(VAL, val, epoch, self.global_step))
        self.history.add(epoch, values)
        logger.info("epoch %d: %s", epoch, _format_values(values))
        self.epoch = epoch + 1
        self._position.end()
        self._call("on_epoch_end", epoch, dict(values))
        if self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir / "last.pt")

    def _train_epoch(self, batches: Batches) -> dict[str, float]:
        iterator, start, aggregate = self._position.begin(batches, self.epoch)
        self._loop.reset_stateful()
        self.pipeline.train()
        count = start
        with torch.enable_grad():
            label = f"epoch {self.epoch} train"
            bar = self._loop.bar(iterator, label, batches, start)
            for batch_idx, batch in enumerate(bar, start):
                outputs = self._train_batch(batch, batch_idx, aggregate)
                self._position.advance(batch_idx)
                count += 1
                self._call("on_train_batch_end", batch_idx, outputs)
        if count == 0:
            raise ValueError(
                f"fit got zero batches in stage TRAIN for epoch {self.epoch}: the "
                f"train batches are empty (or used up).\n  Fix: pass non-empty "
                f"training data; with drop_last=True it needs at least one full "
                f"batch"
            )
        return self._loop.finish(aggregate, TRAIN)

    def _train_batch(
        self, batch: Any, batch_idx: int, aggregate: EpochAggregate
    ) -> dict[str, Any]:
        context = Context(TRAIN, self.epoch, batch_idx, self.global_step)
        run = self._loop.run(batch, context)
        if self._optimizer is not None:
            step(
                self._optimizer,
                run.total,
                run.terms,
                self._loop.collector.loss_nodes,
            )
            self.global_step += 1
        self._loop.record(aggregate, run)
        if not self.callbacks:
            return {}
        return run.outputs

    # Evaluation

    def validate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Run ``batches`` in stage VAL; return the epoch values by key.

        Runs in eval mode without gradients; the context carries the
        trainer's ``epoch`` and ``global_step``. Values are means over the
        samples, not over the batches. Empty batches give ``{}`` and a
        warning.

        Examples
        --------
        >>> @metric
        ... def mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ...     return (x - y).abs().mean()
        >>> trainer = Trainer(Pipeline([mae]), progress=False)
        >>> trainer.validate([
        ...     {"x": torch.zeros(3), "y": torch.ones(3)},
        ...     {"x": torch.zeros(1), "y": torch.full((1,), 5.0)},
        ... ])
        {'val/mae': 2.0}
        """
        return self._evaluate_call(VAL, batches)

    def test(self, batches: Iterable[Any]) -> dict[str, float]:
        """Run ``batches`` in stage TEST; return the epoch values by key.

        The same as `validate`, in stage TEST.

        Examples
        --------
        >>> @metric
        ... def hits(x: torch.Tensor) -> torch.Tensor:
        ...     return (x > 0).float().mean()
        >>> Trainer(Pipeline([hits]), progress=False).test([{"x": torch.ones(4)}])
        {'test/hits': 1.0}
        """
        return self._evaluate_call(TEST, batches)

    def _evaluate_call(
        self, stage: ExecutionStage, batches: Iterable[Any]
    ) -> dict[str, float]:
        source = Batches(batches, stage.value)
        warn_uninitialized(self.pipeline, stage, stacklevel=3)
        with self._loop.eval_mode():
            return self._loop.evaluate(stage, source, self.epoch, self.global_step)

    def predict(
        self, batches: Iterable[Any], outputs: str | Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Run ``batches`` in stage INFERENCE; return each batch's outputs.

        Runs in eval mode without gradients. ``outputs`` restricts the run
        to the nodes those names need, as in `Pipeline.forward`. Several
        threads may call `predict` of one trainer at once: the modules stay
        in eval mode until the last call returns.

        Examples
        --------
        >>> @node(stages="inference")
        ... def decision(x: torch.Tensor) -> torch.Tensor:
        ...     return x > 0
        >>> trainer = Trainer(Pipeline([decision]), progress=False)
        >>> trainer.predict([{"x": torch.tensor([-1.0, 2.0])}])
        [{'decision': tensor([False,  True])}]
        """
        source = Batches(batches, "inference")
        warn_uninitialized(self.pipeline, INFERENCE, stacklevel=2)
        with self._loop.eval_mode():
            results = self._loop.predict(source, self.epoch, self.global_step, outputs)
        if not results:
            warnings.warn(
                "predict got zero batches; returning an empty list",
                CuvisDSLWarning,
                stacklevel=2,
            )
        return results

    # Checkpoints

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write everything needed to resume training exactly, atomically.

        The file holds the pipeline's ``state_dict`` (key ``"pipeline"``),
        the optimiser state, the counters, the history, the callbacks'
        states and the random generators' states; it loads with
        ``torch.load(path, weights_only=True)``. Taken in the middle of an
        epoch, it also holds the position in that epoch, and resuming
        continues with the next batch.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> trainer = Trainer(Pipeline([]), progress=False)
        >>> path = trainer.save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "a.pt")
        >>> state = torch.load(path, weights_only=True)
        >>> state["epoch"], state["batch_idx"], state["global_step"]
        (0, 0, 0)
        """
        state = checkpoint_state(self, self._position, self._loaded)
        written = write_checkpoint(state, path)
        logger.info(
            "checkpoint at epoch %d, batch %d, global step %d written to %s",
            self.epoch,
            state["batch_idx"],
            self.global_step,
            written,
        )
        return written

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint's pipeline, optimiser, counters, history and callbacks.

        Use this to evaluate a saved state, or to continue training: the
        next `fit` applies the optimiser state, the random states and the
        position inside an epoch, so that it continues exactly as
        ``fit(..., resume_from=path)`` would. Callbacks that differ from
        the run's keep their own state (with a warning when the trainer
        has any); a `fit` that continues from the checkpoint needs the
        run's callbacks.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> @loss
        ... def gap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ...     return (x - y).abs().mean()
        >>> trained = Trainer(Pipeline([gap]), max_epochs=2, progress=False)
        >>> _ = trained.fit([{"x": torch.zeros(2), "y": torch.ones(2)}])
        >>> path = trained.save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "a.pt")
        >>> fresh = Trainer(Pipeline([gap]), progress=False)
        >>> fresh.load_checkpoint(path)
        >>> fresh.epoch, fresh.history["train/gap"]
        (2, [1.0, 1.0])
        """
        with preserved_modes(self.pipeline):
            self._loaded = load_checkpoint_into(self, path, resuming=False)
        saved = self._loaded.checkpoint["optimizer"]
        if saved is not None and self._optimizer_source is not None:
            self._optimizer = resolve_optimizer(self._optimizer_source, self.pipeline)
            if self._optimizer is not None:
                self._optimizer.load_state_dict(saved)

    # Helpers

    def _reject_empty(self, batches: Batches) -> None:
        if batches.known_length() == 0:
            raise ValueError(
                "fit got zero batches in stage TRAIN: the train batches are "
                "empty.\n  Fix: pass non-empty training data; with "
                "drop_last=True it needs at least one full batch"
            )

    def _check_plans(self, batches: Batches, val: Batches | None) -> None:
        """Plan TRAIN and (if it will run) VAL before any batch runs."""
        self._loop.check_plan(TRAIN, batches)
        epochs = range(self.epoch, self.max_epochs)
        if val is not None and any((e + 1) % self.validate_every == 0 for e in epochs):
            self._loop.check_plan(VAL, val)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _format_values(values: Mapping[str, float]) -> str:
    if not values:
        return "(no values)"
    return ", ".join(
        f"{key}={value:.6g}" if math.isfinite(value) else f"{key}={value}"
        for key, value in values.items()
    )


def _warn_nothing_to_do(epoch: int, max_epochs: int) -> None:
    warnings.warn(
        f"fit has nothing to do: the trainer is at epoch {epoch} and "
        f"max_epochs is {max_epochs}.\n  Fix: raise max_epochs to train further",
        CuvisDSLWarning,
        stacklevel=3,
    )
