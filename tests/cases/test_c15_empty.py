"""C15: empty data gives a clear error or warning, never ZeroDivisionError or NaN."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from cuvis_dsl import CuvisDSLWarning, Pipeline, Trainer, loss, metric, node
from cuvis_dsl._statistical import is_initialized


@node(outputs="x")
class ChannelStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.calls = 0

    def statistical_initialization(self, stream) -> None:
        self.calls += 1
        rows = [item["x"] for item in stream]
        self.mean = torch.cat(rows).mean(dim=0) if rows else torch.full((3,), math.nan)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.mean


@node(outputs="pred")
class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)


@loss
def mse(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


@metric
def mae(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).abs().mean()


def batches(count: int) -> list[dict[str, Tensor]]:
    return [{"x": torch.randn(4, 3), "y": torch.randn(4)} for _ in range(count)]


def make(stats: bool = False, **options) -> tuple[Pipeline, Trainer]:
    nodes = [Head(), mse, mae] + ([ChannelStats()] if stats else [])
    pipe = Pipeline(nodes)
    optimizer = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    return pipe, Trainer(pipe, optimizer, progress=False, **options)


def loader(samples: int, batch_size: int) -> DataLoader:
    data = TensorDataset(torch.randn(samples, 3), torch.randn(samples))
    return DataLoader(
        data,
        batch_size=batch_size,
        drop_last=True,
        collate_fn=lambda rows: {
            "x": torch.stack([r[0] for r in rows]),
            "y": torch.stack([r[1] for r in rows]),
        },
    )


def generator_of(items):
    yield from items


@pytest.mark.parametrize("source", [list, generator_of], ids=["list", "generator"])
def test_a_statistical_initialisation_on_empty_data_names_the_node(source):
    pipe, trainer = make(stats=True)
    stats = pipe["channel_stats"]

    with pytest.raises(
        ValueError, match="statistical node 'channel_stats' received zero"
    ):
        trainer.statistical_initialization(source([]))

    assert stats.calls == 0
    assert torch.equal(stats.mean, torch.zeros(3))
    assert not is_initialized(stats)


def test_b_fit_on_empty_train_data_names_the_stage_and_zero_batches():
    pipe, trainer = make(stats=True)
    before = {k: v.clone() for k, v in pipe.state_dict().items()}

    with pytest.raises(ValueError, match="zero batches in stage TRAIN"):
        trainer.fit([])

    assert all(torch.equal(before[k], v) for k, v in pipe.state_dict().items())
    assert pipe["channel_stats"].calls == 0
    assert len(trainer.history) == 0


def test_b_fit_on_an_empty_generator_raises_the_same_clear_error():
    _, trainer = make()

    with pytest.raises(ValueError, match="zero batches in stage TRAIN"):
        trainer.fit(generator_of([]))


def test_c_empty_validation_is_skipped_with_a_warning_and_no_val_values():
    _, trainer = make(max_epochs=2)

    with pytest.warns(CuvisDSLWarning, match="VAL skipped"):
        history = trainer.fit(batches(2), val=[])

    assert history.keys() == ["train/loss", "train/mse"]
    assert all(not math.isnan(v) for record in history.records for v in record.values())
    assert trainer.global_step == 4


def test_d_test_on_empty_data_warns_and_returns_nothing():
    _, trainer = make()

    with pytest.warns(CuvisDSLWarning, match="TEST skipped"):
        assert trainer.test([]) == {}
    with pytest.warns(CuvisDSLWarning, match="VAL skipped"):
        assert trainer.validate([]) == {}
    with pytest.warns(CuvisDSLWarning, match="zero batches"):
        assert trainer.predict([]) == []


def test_e_train_split_smaller_than_a_batch_with_drop_last_is_a_clear_error():
    _, trainer = make()

    with pytest.raises(ValueError, match="zero batches in stage TRAIN") as caught:
        trainer.fit(loader(samples=3, batch_size=4))

    assert "drop_last=True" in str(caught.value)


def test_e_val_split_smaller_than_a_batch_with_drop_last_skips_validation():
    _, trainer = make()

    with pytest.warns(CuvisDSLWarning, match="VAL skipped"):
        history = trainer.fit(loader(8, 4), val=loader(samples=3, batch_size=4))

    assert "val/loss" not in history and "train/loss" in history


def test_batches_of_zero_samples_report_nothing_instead_of_nan():
    _, trainer = make()
    empty = [{"x": torch.zeros(0, 3), "y": torch.zeros(0)}]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = trainer.validate(empty)

    assert values == {}
    assert any("zero samples" in str(w.message) for w in caught)
