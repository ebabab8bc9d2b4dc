"""C13: data-shaped buffers survive a strict state_dict round trip.

A statistical node ``channel_stats`` learns a mean ``(C,)`` and a
covariance ``(C, C)`` whose shape is only known once data has been seen.
Its state, saved to disk, must load with ``strict=True`` into a fresh,
uninitialised pipeline, in the class form and in the decorator form, with
the statistics registered as ``None`` or as empty placeholders.
"""

# cuvis.ai-style INPUT_SPECS / OUTPUT_SPECS are class-level dicts.
# ruff: noqa: RUF012

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Node, Pipeline, PortSpec, Trainer, node
from cuvis_dsl._state import is_initialized

CHANNELS = 7


def placeholder(kind: str, dims: int) -> Tensor | None:
    """``None``, or an empty tensor of the right rank, as the statistic."""
    return None if kind == "none" else torch.empty((0,) * dims)


def channel_moments(stream) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the channels over every batch of the stream."""
    rows = torch.cat(
        [item["cube"].reshape(-1, item["cube"].shape[-1]) for item in stream]
    )
    return rows.mean(dim=0), torch.cov(rows.T)


class ChannelStats(Node):
    """Mean (C,) and covariance (C, C) of the cube's channels."""

    OUTPUT_SPECS = {"scores": PortSpec(dtype=torch.float32, shape=(-1,))}

    def __init__(self, kind: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("mean", placeholder(kind, 1))
        self.register_buffer("cov", placeholder(kind, 2))
        self.register_buffer("inverse", None, persistent=False)

    def statistical_initialization(self, stream) -> None:
        self.mean, self.cov = channel_moments(stream)

    def forward(self, cube: Tensor, **_):
        if self.inverse is None:
            self.inverse = torch.linalg.pinv(self.cov)
        centered = cube.reshape(-1, cube.shape[-1]) - self.mean
        return {"scores": ((centered @ self.inverse) * centered).sum(dim=-1)}


@node(outputs="scores")
class ChannelStatsModule(nn.Module):
    """The same statistics as a plain module declared with @node."""

    def __init__(self, kind: str = "none"):
        super().__init__()
        self.register_buffer("mean", placeholder(kind, 1))
        self.register_buffer("cov", placeholder(kind, 2))
        self.register_buffer("inverse", None, persistent=False)

    def statistical_initialization(self, stream) -> None:
        self.mean, self.cov = channel_moments(stream)

    def forward(self, cube: Tensor) -> Tensor:
        if self.inverse is None:
            self.inverse = torch.linalg.pinv(self.cov)
        centered = cube.reshape(-1, cube.shape[-1]) - self.mean
        return ((centered @ self.inverse) * centered).sum(dim=-1)


def build(form: str, kind: str) -> Pipeline:
    if form == "class":
        return Pipeline([ChannelStats(kind)])
    return Pipeline([node(ChannelStatsModule(kind), name="channel_stats")])


def initialise(pipe: Pipeline, channels: int = CHANNELS, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    stream = [
        {"cube": torch.randn(4, 5, channels, generator=generator)} for _ in range(3)
    ]
    pipe["channel_stats"].statistical_initialization(stream)


FORMS = pytest.mark.parametrize("form", ["class", "decorator"])
KINDS = pytest.mark.parametrize("kind", ["none", "empty"])
FIXED_INPUT = torch.linspace(-1.0, 1.0, 2 * 3 * CHANNELS).reshape(2, 3, CHANNELS)


@FORMS
@KINDS
def test_strict_load_into_fresh_pipeline_reproduces_inference(form, kind, tmp_path):
    original = build(form, kind)
    initialise(original)
    torch.save(original.state_dict(), tmp_path / "stats.pt")

    fresh = build(form, kind)
    result = fresh.load_state_dict(
        torch.load(tmp_path / "stats.pt", weights_only=True), strict=True
    )

    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    expected = original.forward(batch={"cube": FIXED_INPUT}, stage="inference")
    actual = fresh.forward(batch={"cube": FIXED_INPUT}, stage="inference")
    assert torch.equal(actual["scores"], expected["scores"])


@FORMS
@KINDS
def test_trainer_initialised_statistics_survive_a_strict_round_trip(
    form, kind, tmp_path
):
    original = build(form, kind)
    generator = torch.Generator().manual_seed(1)
    batches = [
        {"cube": torch.randn(4, 5, CHANNELS, generator=generator)} for _ in range(3)
    ]

    names = Trainer(original, progress=False).statistical_initialization(batches)
    torch.save(original.state_dict(), tmp_path / "stats.pt")
    fresh = build(form, kind)
    fresh.load_state_dict(
        torch.load(tmp_path / "stats.pt", weights_only=True), strict=True
    )

    assert names == ["channel_stats"]
    mean, cov = channel_moments(batches)
    assert torch.equal(fresh["channel_stats"].mean, mean)
    assert torch.equal(fresh["channel_stats"].cov, cov)
    assert is_initialized(fresh["channel_stats"])
    expected = original.forward(batch={"cube": FIXED_INPUT}, stage="inference")
    actual = fresh.forward(batch={"cube": FIXED_INPUT}, stage="inference")
    assert torch.equal(actual["scores"], expected["scores"])


@KINDS
def test_fresh_class_node_reports_itself_initialised_after_load(kind):
    original = build("class", kind)
    initialise(original)
    fresh = build("class", kind)
    assert fresh["channel_stats"].initialized is False

    fresh.load_state_dict(original.state_dict(), strict=True)

    assert fresh["channel_stats"].initialized is True


@KINDS
def test_fresh_decorated_module_counts_as_initialised_after_load(kind):
    original = build("decorator", kind)
    initialise(original)
    fresh = build("decorator", kind)
    assert not is_initialized(fresh["channel_stats"])

    fresh.load_state_dict(original.state_dict(), strict=True)

    assert is_initialized(fresh["channel_stats"])


@FORMS
def test_state_keys_are_qualified_by_node_name(form):
    pipe = build(form, "none")
    initialise(pipe)

    state = pipe.state_dict()

    assert sorted(state) == ["channel_stats.cov", "channel_stats.mean"]
    assert state["channel_stats.mean"].shape == (CHANNELS,)
    assert state["channel_stats.cov"].shape == (CHANNELS, CHANNELS)


@FORMS
@KINDS
def test_loading_five_channels_into_seven_names_the_key_and_both_shapes(form, kind):
    five = build(form, kind)
    initialise(five, channels=5)
    seven = build(form, kind)
    initialise(seven, channels=7)

    with pytest.raises(RuntimeError) as caught:
        seven.load_state_dict(five.state_dict(), strict=True)

    message = str(caught.value)
    assert "channel_stats.mean" in message
    assert "torch.Size([5])" in message and "torch.Size([7])" in message
    assert "channel_stats.cov" in message
    assert "torch.Size([5, 5])" in message and "torch.Size([7, 7])" in message


@FORMS
@KINDS
def test_strict_load_of_a_state_missing_a_key_lists_it(form, kind):
    original = build(form, kind)
    initialise(original)
    state = original.state_dict()
    del state["channel_stats.cov"]

    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*channel_stats\.cov"):
        build(form, kind).load_state_dict(state, strict=True)


@FORMS
def test_lenient_load_of_a_partial_state_returns_the_missing_key(form):
    original = build(form, "none")
    initialise(original)
    state = original.state_dict()
    del state["channel_stats.mean"]

    result = build(form, "none").load_state_dict(state, strict=False)

    assert list(result.missing_keys) == ["channel_stats.mean"]


@FORMS
def test_non_persistent_buffer_is_not_saved_and_never_missing(form):
    original = build(form, "none")
    initialise(original)
    original.forward(batch={"cube": FIXED_INPUT}, stage="inference")
    assert original["channel_stats"].inverse is not None

    state = original.state_dict()
    fresh = build(form, "none")
    result = fresh.load_state_dict(state, strict=True)

    assert "channel_stats.inverse" not in state
    assert "channel_stats.inverse" not in result.missing_keys
    assert fresh["channel_stats"].inverse is None


@FORMS
def test_state_of_an_uninitialised_pipeline_loads_and_leaves_it_uninitialised(form):
    saved = build(form, "none").state_dict()
    fresh = build(form, "none")

    fresh.load_state_dict(saved, strict=True)

    assert saved == {}
    assert fresh["channel_stats"].mean is None
    assert not is_initialized(fresh["channel_stats"])
