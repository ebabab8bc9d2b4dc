"""Module-level nodes and transforms that spawn workers can import."""

import torch
from torch import Tensor

from cuvis_dsl import Pipeline, node


@node(stages="train|inference")
def augment(cube: Tensor, gain: float = 2.0) -> Tensor:
    return cube * gain + 1


@node(stages="train|inference")
def total(augment: Tensor) -> Tensor:
    return augment.sum(-1)


twice = node(augment, name="twice", outputs="twice")

PIPE = Pipeline([augment, total])


class Cubes(torch.utils.data.Dataset):
    """Six small cubes, each passed through ``transform``."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(torch.full((3,), float(index)))


class ThroughPipeline:
    """A transform that runs a pipeline in INFERENCE and returns one output."""

    def __init__(self, pipe: Pipeline, output: str) -> None:
        self.pipe = pipe
        self.output = output

    def __call__(self, cube: Tensor) -> Tensor:
        out = self.pipe.forward(batch={"cube": cube}, stage="inference")
        return out[self.output]


def make_local_node():
    @node
    def local(cube: Tensor) -> Tensor:
        return cube

    return local


def call_node(item, value):
    return item(value)
