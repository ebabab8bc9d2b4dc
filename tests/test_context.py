"""Context: validation, immutability and repr."""

import attrs
import pytest

from cuvis_dsl import Context, ExecutionStage


def test_context_defaults_to_the_start_of_training():
    context = Context(stage="train")
    assert context.stage is ExecutionStage.TRAIN
    assert (context.epoch, context.batch_idx, context.global_step) == (0, 0, 0)
    assert (context.rank, context.world_size) == (0, 1)


def test_context_stage_accepts_a_member_or_its_name():
    assert Context(stage=ExecutionStage.VAL) == Context(stage="val")


@pytest.mark.parametrize(
    ("stage", "fragment"),
    [
        (ExecutionStage.ALWAYS, "not ALWAYS"),
        ("always", "not ALWAYS"),
        ("train|val", "exactly one stage"),
        (ExecutionStage.TRAIN | ExecutionStage.TEST, "exactly one stage"),
        ("trian", "Did you mean 'train'"),
    ],
)
def test_context_rejects_stages_that_are_not_one_concrete_stage(stage, fragment):
    with pytest.raises(ValueError, match=fragment):
        Context(stage=stage)


@pytest.mark.parametrize("field", ["epoch", "batch_idx", "global_step", "rank"])
@pytest.mark.parametrize("bad", [-1, True, 1.0, "1"])
def test_counters_must_be_non_negative_ints(field, bad):
    with pytest.raises(ValueError, match=rf"Context\.{field} must be a non-negative"):
        Context(stage="train", **{field: bad})


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_world_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"Context\.world_size must be a positive"):
        Context(stage="train", world_size=bad)


def test_rank_must_be_below_world_size():
    with pytest.raises(ValueError, match="rank must be below world_size=2, got 2"):
        Context(stage="train", rank=2, world_size=2)
    assert Context(stage="train", rank=1, world_size=2).rank == 1


def test_rank_and_world_size_are_keyword_only():
    with pytest.raises(TypeError):
        Context("train", 0, 0, 0, 1)  # type: ignore[misc]


def test_context_is_frozen_and_hashable():
    context = Context(stage="val", epoch=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        context.epoch = 3  # type: ignore[misc]
    assert {context: "x"}[Context(stage="val", epoch=2)] == "x"


def test_replace_returns_a_changed_copy_and_validates_it():
    context = Context(stage="train", epoch=1)
    changed = context.replace(stage="val", batch_idx=4)
    assert (changed.stage, changed.epoch, changed.batch_idx) == (
        ExecutionStage.VAL,
        1,
        4,
    )
    assert context.stage is ExecutionStage.TRAIN
    with pytest.raises(ValueError, match="not ALWAYS"):
        context.replace(stage="always")


def test_repr_shows_distributed_fields_only_when_set():
    assert repr(Context(stage="val", epoch=2, batch_idx=1, global_step=7)) == (
        "Context(stage=VAL, epoch=2, batch_idx=1, global_step=7)"
    )
    assert repr(Context(stage="test", rank=1, world_size=4)) == (
        "Context(stage=TEST, epoch=0, batch_idx=0, global_step=0, rank=1, world_size=4)"
    )
