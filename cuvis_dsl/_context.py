"""The run-time context handed to nodes that ask for it."""

from __future__ import annotations

import attrs

from ._stages import ExecutionStage, as_stage

__all__ = ["Context"]


def _non_negative(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"Context.{attribute.name} must be a non-negative int, got {value!r}"
        )


def _world(instance: Context, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Context.world_size must be a positive int, got {value!r}")
    if instance.rank >= value:
        raise ValueError(
            f"Context.rank must be below world_size={value}, got {instance.rank}"
        )


@attrs.frozen
class Context:
    """Where a run stands: its stage and the trainer's counters.

    A node receives the context of the current call when one of its
    parameters is annotated ``Context`` or is named ``context`` without an
    annotation. The stage must be one concrete stage: ``ALWAYS`` or a
    combination is rejected. Contexts are immutable; use `attrs.evolve` or
    `Context.replace` for a changed copy.

    Parameters
    ----------
    stage
        The stage of the run, as a member or its name (``"val"``).
    epoch
        Training epoch, counted from 0.
    batch_idx
        Index of the batch within the epoch, counted from 0.
    global_step
        Number of optimiser steps taken before this batch.
    rank
        Rank of this process in distributed training.
    world_size
        Number of processes in distributed training.

    Examples
    --------
    >>> Context(stage="val", epoch=2)
    Context(stage=VAL, epoch=2, batch_idx=0, global_step=0)
    >>> Context(stage=ExecutionStage.ALWAYS)
    Traceback (most recent call last):
    ...
    ValueError: a run happens in exactly one concrete stage, not ALWAYS; ...
    """

    stage: ExecutionStage = attrs.field(converter=as_stage)
    epoch: int = attrs.field(default=0, validator=_non_negative)
    batch_idx: int = attrs.field(default=0, validator=_non_negative)
    global_step: int = attrs.field(default=0, validator=_non_negative)
    rank: int = attrs.field(default=0, validator=_non_negative, kw_only=True)
    world_size: int = attrs.field(default=1, validator=_world, kw_only=True)

    def replace(self, **changes: object) -> Context:
        """Return a copy with some fields changed."""
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        text = (
            f"Context(stage={self.stage.name}, epoch={self.epoch}, "
            f"batch_idx={self.batch_idx}, global_step={self.global_step}"
        )
        if self.world_size != 1 or self.rank != 0:
            text += f", rank={self.rank}, world_size={self.world_size}"
        return text + ")"
