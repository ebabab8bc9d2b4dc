"""Checkpoint files: atomic writes, weights-only loads, random states."""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Pipeline, Trainer, loss, node
from cuvis_dsl._checkpoint import (
    FORMAT,
    capture_rng,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)


def test_write_then_read_round_trips_tensors_and_plain_values(tmp_path):
    state = {"weights": torch.arange(3.0), "names": ["a", "b"], "step": 7}

    path = write_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    loaded = read_checkpoint(path)

    assert loaded["format"] == FORMAT
    assert torch.equal(loaded["weights"], state["weights"])
    assert (loaded["names"], loaded["step"]) == (["a", "b"], 7)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_checkpoint({"step": 1}, tmp_path / "last.pt")

    with pytest.raises(RuntimeError, match="disk full"):
        write_checkpoint({"step": 2, "bad": Unpicklable()}, path)

    assert read_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_reading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nope\.pt"):
        read_checkpoint(tmp_path / "nope.pt")


def test_reading_a_bare_state_dict_says_how_to_load_it(tmp_path):
    torch.save({"weight": torch.ones(1)}, tmp_path / "bare.pt")

    with pytest.raises(ValueError, match="not a cuvis_dsl checkpoint") as caught:
        read_checkpoint(tmp_path / "bare.pt")

    assert "pipeline.load_state_dict" in str(caught.value)


class Payload:
    pass


def test_files_with_pickled_classes_are_refused(tmp_path):
    torch.save({"format": FORMAT, "x": Payload()}, tmp_path / "evil.pt")

    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(tmp_path / "evil.pt")


def test_random_states_round_trip_for_torch_python_and_numpy():
    numpy = pytest.importorskip("numpy")
    state = capture_rng()
    first = (torch.rand(3), random.random(), numpy.random.rand())

    torch.rand(10), random.random(), numpy.random.rand(5)
    restore_rng(state)

    second = (torch.rand(3), random.random(), numpy.random.rand())
    assert torch.equal(first[0], second[0])
    assert first[1:] == second[1:]


@node(outputs="pred")
class Line(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)


@loss
def mse(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


def test_a_trainer_checkpoint_loads_with_weights_only(tmp_path):
    trainer = Trainer(
        Pipeline([Line(), mse]),
        lambda params: torch.optim.Adam(params, lr=0.1),
        max_epochs=2,
        progress=False,
    )
    batches = [{"x": torch.randn(4, 2), "y": torch.randn(4)} for _ in range(2)]
    trainer.fit(batches, val=batches)

    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    assert set(state["pipeline"]) == {"line.linear.weight", "line.linear.bias"}
    assert (state["epoch"], state["batch_idx"], state["global_step"]) == (2, 0, 4)
    assert state["history"]["epochs"] == [0, 1]
    assert int(state["optimizer"]["state"][0]["step"]) == 4
