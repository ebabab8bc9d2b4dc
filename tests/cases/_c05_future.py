"""Nodes declared under postponed evaluation of annotations.

``_c05_plain.py`` is the same module without the future import.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from cuvis_dsl import Context, PortSpec, node


@node
def denoise(cube: torch.Tensor, k: int = 3) -> torch.Tensor:
    return cube * k


@node
def boxed(denoise: torch.Tensor) -> Box:
    return Box(denoise)


@node
def unboxed(boxed: Box) -> torch.Tensor:
    return boxed.value


@node
def select(
    cube: Annotated[torch.Tensor, PortSpec(dtype=torch.float32, shape=(-1, "C"))],
) -> torch.Tensor:
    return cube.sum(-1)


SEEN: list[Context] = []


@node(stages="train|val")
def log_step(loss: Tensor, ctx: Context) -> Tensor:
    SEEN.append(ctx)
    return loss


@node
def by_name(x: Tensor, context) -> Tensor:
    return x


class Box:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value
