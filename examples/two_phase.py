"""Two-phase training: fit a normaliser from statistics, then train a head.

Phase one computes the per-channel mean and standard deviation of the
training spectra (no gradients); phase two trains a linear classifier on
the normalised spectra with a loss, validating with an accuracy metric
after every epoch. Runs in a few seconds on a CPU.
"""

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cuvis_dsl import EarlyStopping, Pipeline, Trainer, loss, metric, node

CHANNELS = 6


class Spectra(Dataset):
    """Two classes of noisy spectra, far from zero mean and unit scale."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, 2, (count,), generator=generator).float()
        signal = torch.linspace(-1.0, 1.0, CHANNELS) * (2 * self.label[:, None] - 1)
        noise = torch.randn(count, CHANNELS, generator=generator)
        self.cube = 500.0 + 40.0 * (signal + noise)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"cube": self.cube[index], "label": self.label[index]}


@node(outputs="normalized")
class Standardize(nn.Module):
    """Per-channel standardisation; its statistics come from phase one."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    def statistical_initialization(self, stream) -> None:
        cubes = torch.cat([item["cube"] for item in stream])
        self.mean, self.std = cubes.mean(dim=0), cubes.std(dim=0)

    def forward(self, cube: Tensor) -> Tensor:
        return (cube - self.mean) / self.std


@node(outputs="logits")
class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(CHANNELS, 1)

    def forward(self, normalized: Tensor) -> Tensor:
        return self.linear(normalized).squeeze(-1)


@loss
def bce(logits: Tensor, label: Tensor) -> Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, label)


@metric
def accuracy(logits: Tensor, label: Tensor) -> Tensor:
    return ((logits > 0).float() == label).float().mean()


def main() -> None:
    torch.manual_seed(0)
    pipe = Pipeline([Standardize(), Head(), bce, accuracy])
    train = DataLoader(Spectra(512, seed=1), batch_size=64, shuffle=True)
    val = DataLoader(Spectra(200, seed=2), batch_size=64)

    trainer = Trainer(
        pipe,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
        max_epochs=8,
        callbacks=[EarlyStopping(monitor="val/accuracy", mode="max", patience=3)],
        progress=False,
    )
    history = trainer.fit(train, val)

    print(f"statistics from phase one: mean {pipe['standardize'].mean.mean():.1f}")
    print(history)
    test = trainer.test(DataLoader(Spectra(200, seed=3), batch_size=64))
    print("test:", ", ".join(f"{key}={value:.4f}" for key, value in test.items()))


if __name__ == "__main__":
    main()
