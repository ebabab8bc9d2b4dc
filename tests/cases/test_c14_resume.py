"""C14: resuming from a checkpoint continues the counters of an uninterrupted run.

Three TRAIN batches per epoch from a shuffling DataLoader, Dropout in the
model (so the random state matters), Adam, validation every epoch. A
TRAIN|VAL probe logs ``(stage, epoch, batch_idx, global_step)``. Run A
trains three epochs in one go; run B trains one, saves, and a fresh set of
objects resumes to three. Their logs, parameters and optimiser states must
agree, for an end-of-epoch and for a mid-epoch checkpoint.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cuvis_dsl import Callback, Context, Pipeline, Trainer, loss, node
from cuvis_dsl._statistical import is_initialized

LOG: list[tuple[str, int, int, int]] = []


class Samples(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(count, 5, generator=generator)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


@node(outputs="pred")
class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@node(stages="train|val", outputs="probe")
def probe(pred: Tensor, context: Context) -> Tensor:
    LOG.append(
        (context.stage.value, context.epoch, context.batch_idx, context.global_step)
    )
    return pred.detach()


@loss
def mse(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


class Crash(Exception):
    pass


class SaveAndCrash(Callback):
    """Saves a checkpoint after one TRAIN batch, then simulates a crash."""

    def __init__(self, path, at: tuple[int, int] | None) -> None:
        self.path = path
        self.at = at

    def on_train_batch_end(self, trainer, batch_idx, outputs) -> None:
        if (trainer.epoch, batch_idx) == self.at:
            trainer.save_checkpoint(self.path)
            raise Crash


def setup(seed: int, max_epochs: int, **options):
    """Fresh pipeline, data and trainer; ``seed`` seeds the model's init."""
    torch.manual_seed(seed)
    pipe = Pipeline([Regressor(), probe, mse])
    train = DataLoader(Samples(12, seed=1), batch_size=4, shuffle=True)
    val = DataLoader(Samples(6, seed=2), batch_size=3)
    trainer = Trainer(
        pipe,
        lambda params: torch.optim.Adam(params, lr=0.01),
        max_epochs=max_epochs,
        progress=False,
        **options,
    )
    return pipe, trainer, train, val


def run(trainer, train, val, **options) -> list[tuple[str, int, int, int]]:
    LOG.clear()
    with contextlib.suppress(Crash):
        trainer.fit(train, val, **options)
    return list(LOG)


@pytest.fixture(scope="module")
def uninterrupted():
    pipe, trainer, train, val = setup(seed=0, max_epochs=3)
    log = run(trainer, train, val)
    return log, pipe.state_dict(), trainer


def adam_steps(trainer: Trainer) -> set[int]:
    return {int(state["step"]) for state in trainer.optimizer.state.values()}


def assert_same_run(uninterrupted, log, pipe, trainer) -> None:
    expected_log, expected_state, expected_trainer = uninterrupted
    assert log == expected_log
    for key, value in expected_state.items():
        torch.testing.assert_close(pipe.state_dict()[key], value, msg=key)
    assert adam_steps(trainer) == {9}
    assert trainer.global_step == 9 and trainer.epoch == 3
    assert trainer.history.records == expected_trainer.history.records


def test_uninterrupted_run_counts_nine_consecutive_steps(uninterrupted):
    log, _, trainer = uninterrupted
    train = [row for row in log if row[0] == "train"]
    assert [row[3] for row in train] == list(range(9))
    assert [(row[1], row[2]) for row in train] == [
        (epoch, batch) for epoch in range(3) for batch in range(3)
    ]
    val = [row for row in log if row[0] == "val"]
    assert [(row[1], row[3]) for row in val] == [(0, 3)] * 2 + [(1, 6)] * 2 + [
        (2, 9)
    ] * 2
    assert adam_steps(trainer) == {9}


def test_resume_from_end_of_epoch_checkpoint_matches_uninterrupted_run(
    uninterrupted, tmp_path
):
    _, first, train, val = setup(seed=0, max_epochs=1, checkpoint_dir=tmp_path)
    first_log = run(first, train, val)

    pipe, second, train, val = setup(seed=123, max_epochs=3)
    second_log = run(second, train, val, resume_from=tmp_path / "last.pt")

    assert ("val", 0, 0, 3) not in second_log
    assert_same_run(uninterrupted, first_log + second_log, pipe, second)


def test_resume_from_mid_epoch_checkpoint_continues_at_the_next_batch(
    uninterrupted, tmp_path
):
    path = tmp_path / "mid.pt"
    _, first, train, val = setup(
        seed=0, max_epochs=3, callbacks=[SaveAndCrash(path, at=(1, 0))]
    )
    first_log = run(first, train, val)
    assert first_log[-1] == ("train", 1, 0, 3)

    pipe, second, train, val = setup(
        seed=123, max_epochs=3, callbacks=[SaveAndCrash(path, at=None)]
    )
    second_log = run(second, train, val, resume_from=path)

    assert second_log[0] == ("train", 1, 1, 4)
    assert_same_run(uninterrupted, first_log + second_log, pipe, second)


def test_load_checkpoint_then_fit_matches_uninterrupted_run(uninterrupted, tmp_path):
    _, first, train, val = setup(seed=0, max_epochs=1, checkpoint_dir=tmp_path)
    first_log = run(first, train, val)

    pipe, second, train, val = setup(seed=123, max_epochs=3)
    second.load_checkpoint(tmp_path / "last.pt")
    torch.manual_seed(99)
    second_log = run(second, train, val)

    assert_same_run(uninterrupted, first_log + second_log, pipe, second)


def test_load_checkpoint_mid_epoch_then_fit_never_repeats_a_step(
    uninterrupted, tmp_path
):
    path = tmp_path / "mid.pt"
    _, first, train, val = setup(
        seed=0, max_epochs=3, callbacks=[SaveAndCrash(path, at=(1, 0))]
    )
    first_log = run(first, train, val)

    pipe, second, train, val = setup(
        seed=123, max_epochs=3, callbacks=[SaveAndCrash(path, at=None)]
    )
    second.load_checkpoint(path)
    second_log = run(second, train, val)

    assert second_log[0] == ("train", 1, 1, 4)
    assert_same_run(uninterrupted, first_log + second_log, pipe, second)


def test_mid_epoch_resume_with_shorter_data_is_an_error(tmp_path):
    path = tmp_path / "mid.pt"
    _, first, train, val = setup(
        seed=0, max_epochs=3, callbacks=[SaveAndCrash(path, at=(1, 2))]
    )
    run(first, train, val)

    _, second, _, val = setup(
        seed=0, max_epochs=3, callbacks=[SaveAndCrash(path, None)]
    )
    short = DataLoader(Samples(8, seed=1), batch_size=4)
    with pytest.raises(ValueError, match="after 3 batches of epoch 1") as caught:
        second.fit(short, val, resume_from=path)
    assert "now hold only 2" in str(caught.value)


def test_resume_at_max_epochs_warns_and_trains_nothing(tmp_path):
    _, first, train, val = setup(seed=0, max_epochs=1, checkpoint_dir=tmp_path)
    run(first, train, val)
    _, second, train, val = setup(seed=0, max_epochs=1)

    with pytest.warns(UserWarning, match="nothing to do"):
        log = run(second, train, val, resume_from=tmp_path / "last.pt")

    assert log == [] and second.global_step == 3


def test_callbacks_must_match_the_checkpoint(tmp_path):
    _, first, train, val = setup(seed=0, max_epochs=1, checkpoint_dir=tmp_path)
    run(first, train, val)
    _, second, train, val = setup(
        seed=0, max_epochs=2, callbacks=[SaveAndCrash(tmp_path / "x.pt", None)]
    )

    with pytest.raises(ValueError, match="callbacks"):
        second.fit(train, val, resume_from=tmp_path / "last.pt")


# Interaction with C13: statistics shaped by data survive a resume.

CALLS: list[str] = []


@node(outputs="x")
class Standardize(nn.Module):
    """Standardises features with statistics whose shape comes from the data."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    def statistical_initialization(self, stream) -> None:
        CALLS.append("fit")
        rows = torch.cat([item["x"] for item in stream])
        self.mean, self.std = rows.mean(dim=0), rows.std(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def test_resume_keeps_data_shaped_statistics_and_does_not_refit_them(tmp_path):
    torch.manual_seed(0)
    original = Pipeline([Standardize(), Regressor(), mse])
    train = DataLoader(Samples(12, seed=1), batch_size=4)
    optimizer = lambda params: torch.optim.Adam(params, lr=0.01)  # noqa: E731
    options = {"progress": False, "checkpoint_dir": tmp_path}
    CALLS.clear()
    Trainer(original, optimizer, max_epochs=1, **options).fit(train)
    assert CALLS == ["fit"]

    fresh = Pipeline([Standardize(), Regressor(), mse])
    assert fresh["standardize"].mean is None
    trainer = Trainer(fresh, optimizer, max_epochs=2, **options)
    trainer.fit(train, resume_from=tmp_path / "last.pt")

    assert CALLS == ["fit"]
    assert is_initialized(fresh["standardize"])
    torch.testing.assert_close(fresh["standardize"].mean, original["standardize"].mean)
    assert trainer.global_step == 6
