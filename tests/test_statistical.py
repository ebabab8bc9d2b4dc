"""Phase one: which nodes are statistical, their order, and their streams."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Context, Pipeline, node
from cuvis_dsl._statistical import (
    Batches,
    InputStream,
    fit_statistics,
    is_initialized,
    is_statistical,
    statistical_nodes,
)

TRAIN = Context(stage="train").stage


@node(outputs="cube")
class Offset(nn.Module):
    """Rebinds ``cube``: its stream must hold the cube before the offset."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", None)

    def statistical_initialization(self, stream) -> None:
        self.items = list(stream)
        self.shift = torch.stack([item["cube"].mean() for item in self.items]).mean()

    def forward(self, cube: Tensor, scale: float = 2.0) -> Tensor:
        return cube - self.shift


@node(outputs="score")
class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)

    def statistical_initialization(self, stream) -> None:
        self.items = list(stream)
        self.mean = torch.cat([item["cube"] for item in self.items]).mean()

    def forward(self, cube: Tensor, context: Context) -> Tensor:
        return cube - self.mean


class Opted(nn.Module):
    requires_initial_fit = False

    def statistical_initialization(self, stream) -> None:
        raise AssertionError("must not run")


def test_statistical_means_a_module_with_the_method_that_has_not_opted_out():
    assert is_statistical(Scorer()) and is_statistical(Offset())
    assert not is_statistical(Opted()) and not is_statistical(nn.Linear(1, 1))


def test_statistical_nodes_are_ordered_upstream_first():
    pipe = Pipeline([Scorer(), Offset()])

    assert statistical_nodes(pipe, TRAIN) == ["offset", "scorer"]


def test_stream_holds_the_ports_as_the_pipeline_would_call_the_node():
    pipe = Pipeline([Offset()])
    batches = Batches([{"cube": torch.full((2,), 3.0)}], "train")

    stream = InputStream(pipe, "offset", batches, TRAIN, prepare=lambda b: b)
    items = list(stream)

    assert len(items) == 1 and set(items[0]) == {"cube", "scale"}
    assert torch.equal(items[0]["cube"], torch.full((2,), 3.0))
    assert items[0]["scale"] == 2.0


def test_stream_of_a_downstream_node_is_computed_by_fitted_upstream_nodes():
    offset, scorer = Offset(), Scorer()
    pipe = Pipeline([scorer, offset])
    batches = Batches([{"cube": torch.tensor([1.0, 3.0])}], "train")

    for name in statistical_nodes(pipe, TRAIN):
        fit_statistics(pipe, name, batches, TRAIN, prepare=lambda b: b)

    assert torch.equal(scorer.items[0]["cube"], torch.tensor([-1.0, 1.0]))
    assert "context" not in scorer.items[0]
    assert is_initialized(offset) and is_initialized(scorer)


def test_stream_runs_the_upstream_nodes_only_never_the_node_or_its_consumers():
    calls: list[str] = []

    @node(outputs="cube")
    def before(raw: Tensor) -> Tensor:
        calls.append("before")
        return raw + 1

    @node(outputs="after")
    def after(score: Tensor) -> Tensor:
        calls.append("after")
        return score

    scorer = Scorer()
    scorer.register_forward_pre_hook(lambda module, args: calls.append("scorer"))
    pipe = Pipeline([before, scorer, after])
    stream = InputStream(
        pipe, "scorer", Batches([{"raw": torch.ones(2)}], "train"), TRAIN, lambda b: b
    )

    items = list(stream)

    assert calls == ["before"]
    assert torch.equal(items[0]["cube"], torch.full((2,), 2.0))


def test_stream_of_a_function_node_holds_its_inputs():
    @node(outputs="y")
    def shift(x: Tensor, by: float = 1.0) -> Tensor:
        return x + by

    pipe = Pipeline([shift])
    batches = Batches([{"x": torch.zeros(2)}], "train")

    items = list(InputStream(pipe, "shift", batches, TRAIN, prepare=lambda b: b))

    assert len(items) == 1 and items[0]["by"] == 1.0
    assert torch.equal(items[0]["x"], torch.zeros(2))


def test_fitting_from_empty_batches_names_the_node_and_fits_nothing():
    scorer = Scorer()
    pipe = Pipeline([scorer])

    with pytest.raises(ValueError, match="'scorer' received zero samples"):
        fit_statistics(pipe, "scorer", Batches([], "train"), TRAIN, lambda b: b)

    assert scorer.mean is None and not is_initialized(scorer)


def test_a_node_that_ignores_its_stream_is_an_error():
    @node(outputs="y")
    class Lazy(nn.Module):
        def statistical_initialization(self, stream) -> None:
            pass

        def forward(self, x: Tensor) -> Tensor:
            return x

    pipe = Pipeline([Lazy()])
    with pytest.raises(ValueError, match="did not read its stream"):
        fit_statistics(pipe, "lazy", Batches([{"x": 1}], "train"), TRAIN, lambda b: b)


def test_batches_know_when_they_are_empty_without_losing_a_batch():
    one_shot = Batches(iter([{"x": 1}]), "train")

    assert not one_shot.is_empty()
    assert list(one_shot) == [{"x": 1}]
    assert Batches([], "val").is_empty() and Batches(iter([]), "val").is_empty()


def test_one_shot_batches_refuse_a_second_pass():
    batches = Batches((item for item in [{"x": 1}]), "train")
    list(batches)

    with pytest.raises(TypeError, match="one-shot iterator"):
        iter(batches)


@pytest.mark.parametrize("source", [{"x": torch.ones(1)}, 3])
def test_batches_must_be_an_iterable_of_dicts(source):
    with pytest.raises(TypeError, match="wrap a single batch in a list"):
        Batches(source, "train")
