"""A three-node pipeline run in every stage: what runs where, and why."""

import torch
from torch import Tensor

from cuvis_dsl import Context, ExecutionStage, Pipeline, loss, metric, node


@node
def features(cube: Tensor) -> Tensor:
    return cube.mean(dim=-1)


@node(stages=ExecutionStage.TRAIN, outputs="cube")
def jitter(cube: Tensor, context: Context) -> Tensor:
    generator = torch.Generator().manual_seed(context.global_step)
    return cube * (1 + 0.1 * torch.rand(cube.shape[0], 1, generator=generator))


@loss
def mse(features: Tensor, target: Tensor) -> Tensor:
    return ((features - target) ** 2).mean()


@metric
def mae(features: Tensor, target: Tensor) -> Tensor:
    return (features - target).abs().mean()


@node(stages=ExecutionStage.INFERENCE)
def decision(features: Tensor, threshold: float = 0.5) -> Tensor:
    return features > threshold


def main() -> None:
    pipe = Pipeline([features, jitter, mse, mae, decision])
    batch = {"cube": torch.rand(4, 8), "target": torch.full((4,), 0.5)}
    for stage in ("train", "val", "test", "inference"):
        print(pipe.plan(stage))
        outputs = pipe.forward(batch=batch, context=Context(stage=stage))
        shown = {name: tuple(value.shape) for name, value in outputs.items()}
        print(f"  outputs: {shown}\n")
    print(pipe.explain("mse", "inference"))


if __name__ == "__main__":
    main()
