"""The value a metric node reports."""

from __future__ import annotations

from typing import Any

import attrs

from ._stages import ExecutionStage, as_stage

__all__ = ["Metric"]


def _optional_stage(value: Any) -> ExecutionStage | None:
    return None if value is None else as_stage(value)


def _to_float(value: Any) -> float:
    if hasattr(value, "detach"):
        value = value.detach()
        if value.numel() != 1:
            raise ValueError(
                f"Metric.value must be a scalar, got a tensor of shape "
                f"{tuple(value.shape)}; reduce it first (e.g. .mean())"
            )
        value = value.item()
    return float(value)


@attrs.frozen
class Metric:
    """One named scalar reported by a metric node.

    Parameters
    ----------
    name
        Metric name, such as ``"val/accuracy"``.
    value
        A number or a one-element tensor (stored as a float).
    stage
        Stage the value was computed in.
    epoch
        Epoch the value was computed in.
    batch_idx
        Batch the value was computed on.
    weight
        How many samples the value averages over; the trainer weights
        epoch means by it. None means "infer from the batch".

    Examples
    --------
    >>> import torch
    >>> Metric(name="accuracy", value=torch.tensor(0.75), stage="val")
    Metric(name='accuracy', value=0.75, stage=VAL, epoch=None, batch_idx=None)
    """

    name: str
    value: float = attrs.field(converter=_to_float)
    stage: ExecutionStage | None = attrs.field(default=None, converter=_optional_stage)
    epoch: int | None = None
    batch_idx: int | None = None
    weight: float | None = attrs.field(default=None, kw_only=True)

    def __repr__(self) -> str:
        stage = self.stage.name if self.stage is not None else None
        text = (
            f"Metric(name={self.name!r}, value={self.value!r}, stage={stage}, "
            f"epoch={self.epoch!r}, batch_idx={self.batch_idx!r}"
        )
        if self.weight is not None:
            text += f", weight={self.weight!r}"
        return text + ")"
