"""Annotations with typos, under postponed evaluation."""

from __future__ import annotations

import torch

from cuvis_dsl import node


@node
def dotted(cube: torch.Tensr) -> torch.Tensor:  # type: ignore[name-defined]
    return cube


@node
def bare(cube: Tensr) -> torch.Tensor:  # type: ignore[name-defined]  # noqa: F821
    return cube
