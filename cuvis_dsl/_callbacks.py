"""Hooks into `Trainer.fit`: early stopping and keeping the best checkpoint."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import CuvisDSLWarning, did_you_mean, quoted

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = [
    "BestCheckpoint",
    "Callback",
    "EarlyStopping",
    "callback_states",
    "restore_callback_states",
]

logger = logging.getLogger("cuvis_dsl.trainer")


class Callback:
    """Base class of trainer hooks; every method does nothing by default.

    A callback whose behaviour depends on earlier epochs returns that state
    from `state_dict` (plain numbers, strings, lists and dicts); checkpoints
    store it and resuming hands it back through `load_state_dict`.

    Examples
    --------
    >>> class CountSteps(Callback):
    ...     def __init__(self):
    ...         self.steps = 0
    ...     def on_train_batch_end(self, trainer, batch_idx, outputs):
    ...         self.steps += 1
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of `Trainer.fit` (after any resume)."""

    def on_train_batch_end(
        self, trainer: Trainer, batch_idx: int, outputs: Mapping[str, Any]
    ) -> None:
        """After the optimiser step of one TRAIN batch, with the pipeline's outputs."""

    def on_epoch_end(
        self, trainer: Trainer, epoch: int, logs: Mapping[str, float]
    ) -> None:
        """After an epoch and its validation; ``logs`` is the epoch's history row."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, also after early stopping."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class _Monitor(Callback):
    """Follows one history key and tells whether a new value is the best."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if "/" not in monitor:
            raise ValueError(
                f"monitor={monitor!r} lacks its stage.\n  Fix: write "
                f"monitor='val/{monitor}' (or 'train/...', 'test/...')"
            )
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.best: float | None = None

    def value(self, logs: Mapping[str, float]) -> float | None:
        """The monitored value, None when its stage did not run this epoch."""
        if self.monitor in logs:
            return logs[self.monitor]
        stage = self.monitor.split("/", 1)[0] + "/"
        ran = [key for key in logs if key.startswith(stage)]
        if ran:
            raise KeyError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is not "
                f"among the epoch's values.{did_you_mean(self.monitor, logs)} "
                f"Recorded: {quoted(logs)}"
            )
        return None

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]


class EarlyStopping(_Monitor):
    """Stop `Trainer.fit` when a monitored value stops improving.

    Parameters
    ----------
    monitor
        History key, such as ``"val/loss"`` or ``"val/auroc"``.
    mode
        ``"min"`` when lower is better, ``"max"`` when higher is better.
    patience
        Number of epochs in a row without improvement (by more than
        ``min_delta``) after which training stops.
    min_delta
        Smallest change that counts as an improvement.

    Epochs in which the monitored stage does not run (validation every
    other epoch, say) neither count nor reset the patience. A stage that
    runs without producing the key is an error that lists the keys.

    Examples
    --------
    >>> EarlyStopping(monitor="val/auroc", mode="max", patience=3)
    EarlyStopping(monitor='val/auroc', mode='max', patience=3)
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(
        self, trainer: Trainer, epoch: int, logs: Mapping[str, float]
    ) -> None:
        value = self.value(logs)
        if value is None:
            return
        if self.improves(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.should_stop = True
            logger.info(
                "early stopping after epoch %d: %s has not improved on %.6g for "
                "%d epochs",
                epoch,
                self.monitor,
                self.best,
                self.wait,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, "
            f"patience={self.patience})"
        )


class BestCheckpoint(_Monitor):
    """Save a checkpoint whenever a monitored value reaches a new best.

    The file is a full trainer checkpoint (`Trainer.save_checkpoint`): it
    resumes like any other, and its ``"pipeline"`` entry is the pipeline's
    ``state_dict``.

    Parameters
    ----------
    monitor
        History key, such as ``"val/auroc"``.
    path
        Where to write the checkpoint; it is overwritten on each new best.
    mode
        ``"min"`` or ``"max"``.

    Examples
    --------
    >>> BestCheckpoint(monitor="val/loss", path="best.pt")
    BestCheckpoint(monitor='val/loss', path='best.pt', mode='min')
    """

    def __init__(
        self, monitor: str, path: str | os.PathLike[str], mode: str = "min"
    ) -> None:
        super().__init__(monitor, mode)
        self.path = Path(path)
        self.best_epoch: int | None = None

    def on_epoch_end(
        self, trainer: Trainer, epoch: int, logs: Mapping[str, float]
    ) -> None:
        value = self.value(logs)
        if value is None or not self.improves(value):
            return
        self.best, self.best_epoch = value, epoch
        trainer.save_checkpoint(self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]

    def __repr__(self) -> str:
        return (
            f"BestCheckpoint(monitor={self.monitor!r}, path={str(self.path)!r}, "
            f"mode={self.mode!r})"
        )


def callback_states(callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    """Each callback's class name and `Callback.state_dict`, for a checkpoint."""
    return [
        {
            "class": type(callback).__name__,
            "state": callback.state_dict() if hasattr(callback, "state_dict") else {},
        }
        for callback in callbacks
    ]


def restore_callback_states(
    callbacks: Sequence[Any],
    states: Sequence[Mapping[str, Any]],
    path: Any,
    strict: bool = True,
) -> None:
    """Hand each callback its saved state; the callbacks must match the saved ones.

    With ``strict=False`` (loading a checkpoint to evaluate it), callbacks
    that do not match keep their own state: silently when the trainer has
    none, with a warning otherwise.
    """
    saved = [state["class"] for state in states]
    mine = [type(callback).__name__ for callback in callbacks]
    if saved != mine and strict:
        raise ValueError(
            f"the checkpoint {str(path)!r} was written with callbacks {saved}, "
            f"this trainer has {mine}; their states cannot be matched.\n"
            f"  Fix: pass the same callbacks, in the same order"
        )
    if saved != mine:
        if callbacks:
            warnings.warn(
                f"the checkpoint {str(path)!r} was written with callbacks "
                f"{saved}, this trainer has {mine}; their states are not "
                f"restored, and fit cannot resume from this checkpoint.\n"
                f"  Fix: pass the same callbacks, in the same order, to resume",
                CuvisDSLWarning,
                stacklevel=4,
            )
        return
    for callback, state in zip(callbacks, states):
        if hasattr(callback, "load_state_dict"):
            callback.load_state_dict(state["state"])
