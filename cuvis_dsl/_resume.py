"""What a trainer checkpoint holds, and resuming training from one exactly.

A checkpoint holds the pipeline's ``state_dict``, the optimiser state, the
counters, the history, the callbacks' states, the names of the initialised
statistical nodes and the random generators' states. Taken in the middle
of an epoch, it also holds the position in that epoch: how many batches
are done, the random state at the start of the epoch (so that a shuffling
loader yields the same order again) and the epoch's sums so far. Resuming
skips the batches that are done and continues with the next one, so the
run goes on as if it had never stopped.

Loading a checkpoint restores the pipeline, counters, history and
callbacks at once; the optimiser state, the random states and the
position are applied by the next fit, once it has built the optimiser
(see `LoadedCheckpoint`). So ``load_checkpoint(path)`` followed by
``fit(...)`` continues exactly as ``fit(..., resume_from=path)`` does.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ._aggregate import EpochAggregate
from ._callbacks import callback_states, restore_callback_states
from ._checkpoint import capture_rng, read_checkpoint, restore_rng
from ._errors import CuvisDSLWarning
from ._history import History
from ._statistical import is_initialized, mark_initialized

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = [
    "EpochPosition",
    "LoadedCheckpoint",
    "checkpoint_state",
    "load_checkpoint_into",
    "restore_optimizer",
]

logger = logging.getLogger("cuvis_dsl.trainer")


class EpochPosition:
    """Where training stands inside the current TRAIN epoch.

    ``next_batch`` counts the batches done, ``aggregate`` holds the epoch's
    sums so far; both are empty between epochs.
    """

    def __init__(self) -> None:
        self.next_batch = 0
        self.aggregate: EpochAggregate | None = None
        self._start_rng: dict[str, Any] | None = None
        self._resume: Mapping[str, Any] | None = None

    @property
    def mid_epoch(self) -> bool:
        return self.next_batch > 0 and self.aggregate is not None

    def begin(
        self, batches: Iterable[Any], epoch: int
    ) -> tuple[Iterator[Any], int, EpochAggregate]:
        """The epoch's batches, the index of the first one, and the aggregate.

        After `resume_at` this skips the batches the checkpoint had done and
        restores the random state and the sums of that moment.
        """
        self.aggregate = EpochAggregate()
        resume, self._resume = self._resume, None
        if resume is None:
            self._start_rng = capture_rng()
            return iter(batches), 0, self.aggregate
        restore_rng(resume["epoch_rng"])
        iterator = iter(batches)
        start = resume["batch_idx"]
        skipped = sum(1 for _ in itertools.islice(iterator, start))
        if skipped < start:
            raise ValueError(
                f"the checkpoint was taken after {start} batches of epoch "
                f"{epoch}, but the train batches now hold only {skipped}.\n"
                f"  Fix: resume with the same training data"
            )
        restore_rng(resume["rng"])
        self.aggregate.load_state_dict(resume["aggregate"])
        self._start_rng = resume["epoch_rng"]
        return iterator, start, self.aggregate

    def advance(self, batch_idx: int) -> None:
        """Batch ``batch_idx`` is done (its optimiser step taken)."""
        self.next_batch = batch_idx + 1

    def end(self) -> None:
        """The epoch is done; a checkpoint now is an end-of-epoch one."""
        self.next_batch, self.aggregate = 0, None

    def resume_at(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore the random state; mid-epoch, let `begin` skip the done batches."""
        self.end()
        self._resume = None
        restore_rng(checkpoint["rng"])
        if checkpoint["batch_idx"] > 0:
            self._resume = dict(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        if not self.mid_epoch:
            return {"batch_idx": 0, "epoch_rng": None, "aggregate": None}
        assert self.aggregate is not None
        if self.aggregate.stateful:
            warnings.warn(
                "a checkpoint taken mid-epoch does not hold the state of stateful "
                "TRAIN metrics; after resuming, their value for this epoch covers "
                "only the batches after the checkpoint",
                CuvisDSLWarning,
                stacklevel=4,
            )
        return {
            "batch_idx": self.next_batch,
            "epoch_rng": self._start_rng,
            "aggregate": self.aggregate.state_dict(),
        }


POSITION_KEYS = ("rng", "batch_idx", "epoch_rng", "aggregate")


@attrs.frozen
class LoadedCheckpoint:
    """A checkpoint loaded into a trainer, whose training state is still pending.

    The next `Trainer.fit` applies the optimiser state, the random states
    and the position in the epoch, after it has built the optimiser.
    Until then a new checkpoint keeps this one's position and random
    states, since nothing has trained since.
    """

    checkpoint: Mapping[str, Any]
    path: str

    def apply(
        self, optimizer: torch.optim.Optimizer | None, position: EpochPosition
    ) -> None:
        """Restore the optimiser state, the random states and the position."""
        restore_optimizer(optimizer, self.checkpoint)
        position.resume_at(self.checkpoint)

    def check_callbacks(self, callbacks: list[Any]) -> None:
        """Hand the callbacks their saved states; they must match the saved ones."""
        restore_callback_states(callbacks, self.checkpoint["callbacks"], self.path)

    def position_state(self) -> dict[str, Any]:
        return {key: self.checkpoint[key] for key in POSITION_KEYS}


def checkpoint_state(
    trainer: Trainer,
    position: EpochPosition,
    loaded: LoadedCheckpoint | None = None,
) -> dict[str, Any]:
    """Everything needed to resume ``trainer`` exactly, as plain values."""
    optimizer = trainer.optimizer
    pipeline = trainer.pipeline
    where = {"rng": capture_rng(), **position.state_dict()}
    return {
        "pipeline": pipeline.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "history": trainer.history.state_dict(),
        "callbacks": callback_states(trainer.callbacks),
        "initialized": [
            name for name, item in pipeline.nodes.items() if is_initialized(item)
        ],
        **(where if loaded is None else loaded.position_state()),
    }


def load_checkpoint_into(
    trainer: Trainer, path: Any, *, resuming: bool
) -> LoadedCheckpoint:
    """Load the pipeline, counters, history and callbacks of the checkpoint.

    When ``resuming`` (a fit continues from it) the callbacks must match
    the saved ones; otherwise callbacks that do not match are left alone.
    """
    checkpoint = read_checkpoint(path)
    restore_callback_states(
        trainer.callbacks, checkpoint["callbacks"], path, strict=resuming
    )
    pipeline = trainer.pipeline
    pipeline.load_state_dict(checkpoint["pipeline"])
    for name in checkpoint["initialized"]:
        if name in pipeline.nodes:
            mark_initialized(pipeline.nodes[name])
    trainer.epoch = checkpoint["epoch"]
    trainer.global_step = checkpoint["global_step"]
    trainer.history = History.from_state_dict(checkpoint["history"])
    logger.info(
        "loaded checkpoint %s: epoch %d, batch %d, global step %d",
        path,
        trainer.epoch,
        checkpoint["batch_idx"],
        trainer.global_step,
    )
    return LoadedCheckpoint(checkpoint, str(path))


def restore_optimizer(
    optimizer: torch.optim.Optimizer | None, checkpoint: Mapping[str, Any]
) -> None:
    """Load the saved optimiser state; refuse a state without an optimiser."""
    saved = checkpoint["optimizer"]
    if saved is not None and optimizer is None:
        raise ValueError(
            "the checkpoint holds an optimiser state but this trainer has no "
            "optimiser.\n  Fix: pass the optimiser the run was started with"
        )
    if saved is not None:
        assert optimizer is not None
        optimizer.load_state_dict(saved)
    elif optimizer is not None:
        warnings.warn(
            "the checkpoint holds no optimiser state; the optimiser starts afresh",
            CuvisDSLWarning,
            stacklevel=3,
        )
