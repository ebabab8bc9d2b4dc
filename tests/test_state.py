"""Data-shaped buffers: materialising on load, initialisation, freeze/unfreeze."""

# cuvis.ai-style INPUT_SPECS / OUTPUT_SPECS are class-level dicts.
# ruff: noqa: RUF012

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer

from cuvis_dsl import (
    DefinitionError,
    Node,
    NotInitializedError,
    Pipeline,
    PortSpec,
    node,
)
from cuvis_dsl._state import (
    adopt_saved_shapes,
    is_initialized,
    is_unmaterialized,
)


class Whitener(Node):
    """Centres and scales channels with statistics learned from data."""

    OUTPUT_SPECS = {"white": PortSpec()}
    TRAINABLE_BUFFERS = ("mean", "scale")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("mean", None)
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def statistical_initialization(self, stream) -> None:
        rows = torch.cat([item["cube"] for item in stream])
        self.mean = rows.mean(dim=0)
        self.scale = rows.std(dim=0)
        self.count += rows.shape[0]

    def forward(self, cube, **_):
        return {"white": (cube - self.mean) / self.scale}


def initialised(channels: int = 3) -> Whitener:
    whitener = Whitener()
    rows = torch.arange(4.0 * channels).reshape(4, channels)
    whitener.statistical_initialization([{"cube": rows}])
    return whitener


# Unmaterialised buffers ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, True),
        (torch.empty(0), True),
        (torch.empty(0, 0), True),
        (UninitializedBuffer(), True),
        (torch.zeros(()), False),
        (torch.zeros(3), False),
    ],
)
def test_none_lazy_and_empty_buffers_are_unmaterialised(value, expected):
    assert is_unmaterialized(value) is expected


def test_none_buffer_takes_the_saved_dtype_and_empty_placeholder_keeps_its_own():
    saved = initialised().double().state_dict()
    fresh = Whitener()
    fresh.scale = torch.empty(0, dtype=torch.float16)

    fresh.load_state_dict(saved)

    assert fresh.mean.dtype == torch.float64
    assert fresh.scale.dtype == torch.float16
    assert torch.equal(fresh.mean, saved["mean"])


def test_lazy_uninitialised_buffer_takes_the_saved_shape():
    class Lazy(Node):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", UninitializedBuffer())

        def statistical_initialization(self, stream):
            self.mean = torch.stack(list(stream)).mean(0)

        def forward(self, x, **_):
            return {"centered": x - self.mean}

    fresh = Lazy()
    fresh.load_state_dict({"mean": torch.ones(4)})

    assert torch.equal(fresh.mean, torch.ones(4))


def test_pipeline_nested_in_a_larger_model_loads_under_its_prefix():
    def model() -> nn.Module:
        outer = nn.Module()
        outer.pipe = Pipeline([Whitener()])
        return outer

    trained = model()
    trained.pipe["whitener"].statistical_initialization([{"cube": torch.randn(5, 3)}])
    fresh = model()

    fresh.load_state_dict(trained.state_dict(), strict=True)

    assert sorted(trained.state_dict()) == [
        "pipe.whitener.count",
        "pipe.whitener.mean",
        "pipe.whitener.scale",
    ]
    assert torch.equal(fresh.pipe["whitener"].mean, trained.pipe["whitener"].mean)


def test_statistical_module_inside_a_node_is_shaped_on_load():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", None)

        def statistical_initialization(self, stream):
            self.mean = torch.zeros(2)

    class Outer(Node):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x, **_):
            return {"y": x - self.inner.mean}

    fresh = Outer()
    fresh.load_state_dict({"inner.mean": torch.ones(2)}, strict=True)

    assert torch.equal(fresh.inner.mean, torch.ones(2))


def test_modules_without_statistical_initialization_keep_torch_behaviour():
    norm = node(nn.BatchNorm1d(3, track_running_stats=False), name="norm")
    with_stats = nn.BatchNorm1d(3).state_dict()

    with pytest.raises(RuntimeError, match="Unexpected key"):
        Pipeline([norm]).load_state_dict(
            {f"norm.{key}": value for key, value in with_stats.items()}
        )
    assert norm.running_mean is None


def test_adopting_twice_reports_a_missing_key_once():
    fresh = Whitener()
    missing: list[str] = []
    state = {"scale": torch.ones(3)}

    adopt_saved_shapes(fresh, state, "", missing)
    adopt_saved_shapes(fresh, state, "", missing)

    assert missing == ["mean"]


# Initialised ---------------------------------------------------------------


def test_node_is_initialised_after_its_statistical_initialization_returns():
    whitener = Whitener()
    assert whitener.initialized is False

    whitener.statistical_initialization([{"cube": torch.randn(4, 3)}])

    assert whitener.initialized is True


def test_fixed_shape_statistics_do_not_make_a_fresh_node_initialised():
    class Threshold(Node):
        def __init__(self):
            super().__init__()
            self.register_buffer("level", torch.zeros(()))

        def statistical_initialization(self, stream):
            self.level = torch.stack(list(stream)).quantile(0.9)

        def forward(self, scores, **_):
            return {"hits": scores > self.level}

    threshold = Threshold()
    assert threshold.initialized is False

    threshold.statistical_initialization([torch.tensor(1.0), torch.tensor(3.0)])

    assert threshold.initialized is True


def test_node_whose_buffer_was_reset_to_none_is_not_initialised():
    whitener = initialised()
    whitener.mean = None

    assert whitener.initialized is False
    assert not is_initialized(whitener)


def test_requires_initial_fit_tells_statistical_nodes_apart():
    class Plain(Node):
        def forward(self, x, **_):
            return {"y": x}

    assert Whitener().requires_initial_fit is True
    assert Plain().requires_initial_fit is False


# Freeze and unfreeze -------------------------------------------------------


def test_unfreeze_turns_trainable_buffers_into_parameters_keeping_everything():
    whitener = initialised()
    before = {key: value.clone() for key, value in whitener.state_dict().items()}

    whitener.unfreeze()

    assert sorted(name for name, _ in whitener.named_parameters()) == [
        "mean",
        "scale",
    ]
    assert [name for name, _ in whitener.named_buffers()] == ["count"]
    assert all(p.requires_grad for p in whitener.parameters())
    after = whitener.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype
        assert after[key].device == value.device
        assert torch.equal(after[key], value)


def test_unfrozen_statistics_learn_from_gradients():
    whitener = initialised()
    whitener.unfreeze()
    optimizer = torch.optim.SGD(whitener.parameters(), lr=0.1)
    before = whitener.mean.detach().clone()

    pipe = Pipeline([whitener])
    out = pipe.forward(batch={"cube": torch.randn(4, 3)}, stage="train")
    out["white"].pow(2).mean().backward()
    optimizer.step()

    assert not torch.equal(whitener.mean.detach(), before)


def test_freeze_turns_them_back_into_buffers_with_the_learned_values():
    whitener = initialised()
    whitener.unfreeze()
    with torch.no_grad():
        whitener.mean.add_(1.0)
    learned = whitener.mean.detach().clone()

    whitener.freeze()

    assert list(whitener.named_parameters()) == []
    assert sorted(name for name, _ in whitener.named_buffers()) == [
        "count",
        "mean",
        "scale",
    ]
    assert torch.equal(whitener.mean, learned)
    assert whitener.mean.requires_grad is False


def test_freeze_stops_gradients_of_every_other_parameter():
    class Head(Node):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, **_):
            return {"y": self.linear(x)}

    head = Head()
    head.freeze()
    assert not any(p.requires_grad for p in head.parameters())
    head.unfreeze()
    assert all(p.requires_grad for p in head.parameters())


def test_unfreeze_twice_and_freeze_twice_are_harmless():
    whitener = initialised()

    whitener.unfreeze()
    whitener.unfreeze()
    whitener.freeze()
    whitener.freeze()

    assert sorted(whitener.state_dict()) == ["count", "mean", "scale"]


def test_unfrozen_state_loads_into_a_frozen_fresh_node():
    trained = initialised()
    trained.unfreeze()
    fresh = Whitener()

    fresh.load_state_dict(trained.state_dict(), strict=True)

    assert torch.equal(fresh.mean, trained.mean.detach())
    assert list(fresh.named_parameters()) == []


def test_unfreeze_before_initialisation_names_the_node_and_buffer():
    whitener = Whitener(name="whiten")

    with pytest.raises(NotInitializedError) as caught:
        whitener.unfreeze()

    assert caught.value.node == "whiten" and caught.value.buffer == "mean"
    assert "buffer 'mean'" in str(caught.value)
    assert "Fix:" in str(caught.value)
    assert list(whitener.named_parameters()) == []


def test_unfreeze_checks_every_buffer_before_changing_any():
    whitener = initialised()
    whitener.scale = torch.empty(0)

    with pytest.raises(NotInitializedError, match="'scale'"):
        whitener.unfreeze()

    assert list(whitener.named_parameters()) == []


class _Declares(Node):
    def __init__(self, trainable):
        super().__init__()
        self.TRAINABLE_BUFFERS = trainable
        self.register_buffer("steps", torch.zeros(2, dtype=torch.long))
        self.register_buffer("cache", torch.ones(2), persistent=False)

    def forward(self, x, **_):
        return {"y": x}


@pytest.mark.parametrize(
    ("trainable", "message"),
    [
        (("gain",), "'gain', which is not a buffer"),
        (("cache",), "'cache' is not persistent"),
        (("steps",), "cannot require gradients"),
    ],
)
def test_trainable_buffers_that_cannot_become_parameters_are_named(trainable, message):
    with pytest.raises(DefinitionError, match=message) as caught:
        _Declares(trainable).unfreeze()

    assert caught.value.node == "_declares" and caught.value.port == trainable[0]


def test_unfreezing_inside_a_pipeline_keeps_its_state_keys():
    pipe = Pipeline([initialised()])
    keys = sorted(pipe.state_dict())

    pipe["whitener"].unfreeze()

    assert sorted(pipe.state_dict()) == keys
    assert sorted(name for name, _ in pipe.named_parameters()) == [
        "whitener.mean",
        "whitener.scale",
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_buffers_keep_their_device_through_load_and_unfreeze():
    trained = initialised()
    fresh = Whitener().cuda()

    fresh.load_state_dict(trained.state_dict())
    fresh.unfreeze()

    assert fresh.scale.device.type == "cuda"
    assert fresh.count.device.type == "cuda"
    assert fresh.mean.device.type == "cuda"
