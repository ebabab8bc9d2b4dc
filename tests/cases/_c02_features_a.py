"""One of two modules that both define a node called ``features``."""

import torch

from cuvis_dsl import node


@node
def features(cube: torch.Tensor) -> torch.Tensor:
    return cube.mean(-1)
