"""ExecutionStage, StageSet and the normalisation of stage arguments."""

import pytest

from cuvis_dsl import ExecutionStage, StageSet
from cuvis_dsl._stages import as_stage, as_stages

TRAIN, VAL, TEST, INFERENCE, ALWAYS = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
    ExecutionStage.ALWAYS,
)


def test_members_have_lower_case_values():
    assert [stage.value for stage in ExecutionStage] == [
        "always",
        "train",
        "val",
        "test",
        "inference",
    ]


def test_member_compares_equal_to_its_value_and_hashes_like_it():
    assert TRAIN == "train"
    assert hash(TRAIN) == hash("train")
    assert {"train": 1}[TRAIN] == 1


def test_stage_from_string_is_case_and_space_insensitive():
    assert ExecutionStage("val") is VAL
    assert ExecutionStage(" TRAIN ") is TRAIN


def test_unknown_stage_string_lists_valid_names_and_suggests_one():
    with pytest.raises(ValueError, match="unknown execution stage 'trian'") as info:
        ExecutionStage("trian")
    message = str(info.value)
    assert "valid stages: always, train, val, test, inference" in message
    assert "Did you mean 'train'?" in message


def test_or_of_members_gives_a_stage_set():
    combined = TRAIN | VAL
    assert isinstance(combined, StageSet)
    assert combined == {TRAIN, VAL}


def test_or_accepts_strings_on_either_side():
    assert {TRAIN, VAL} == TRAIN | "val"
    assert {TRAIN, VAL} == "val" | TRAIN


def test_always_expands_to_the_four_concrete_stages():
    assert StageSet(ALWAYS) == {TRAIN, VAL, TEST, INFERENCE}
    assert StageSet("always") == StageSet("train|val|test|inference")
    assert StageSet(ALWAYS) == TRAIN | ALWAYS


def test_always_is_in_a_set_only_when_the_set_is_complete():
    assert ALWAYS in StageSet(ALWAYS)
    assert ALWAYS not in StageSet("train|val|test")


def test_stage_set_accepts_cuvis_style_python_sets():
    assert StageSet({TRAIN}) == {TRAIN}
    assert StageSet({TRAIN, "val"}) == {TRAIN, VAL}
    assert StageSet([ALWAYS]) == StageSet(ALWAYS)


def test_stage_set_parses_pipe_separated_strings():
    assert StageSet("train|val") == {TRAIN, VAL}
    assert StageSet(" Test | inference ") == {TEST, INFERENCE}


def test_stage_set_iterates_in_canonical_order():
    assert list(StageSet("inference|test|train")) == [TRAIN, TEST, INFERENCE]


def test_stage_set_str_and_repr_show_the_declaration():
    assert str(StageSet("val|train")) == "TRAIN|VAL"
    assert repr(TRAIN | VAL) == "StageSet(TRAIN|VAL)"
    assert str(StageSet(ALWAYS)) == "ALWAYS"
    assert str(StageSet()) == "(none)"


@pytest.mark.parametrize("bad", ["trian", "train|bogus", "", "|"])
def test_stage_set_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="unknown execution stage"):
        StageSet(bad)


@pytest.mark.parametrize("bad", [3, None, 1.5, [TRAIN, 3]])
def test_stage_set_rejects_non_stage_values_with_type_error(bad):
    with pytest.raises(TypeError, match="expected stages as an ExecutionStage"):
        StageSet(bad)


def test_stage_set_is_hashable_and_immutable():
    stages = TRAIN | VAL
    assert {stages: 1}[StageSet("val|train")] == 1
    with pytest.raises(AttributeError):
        stages.add(TEST)  # type: ignore[attr-defined]


def test_as_stages_returns_a_stage_set_unchanged():
    stages = TRAIN | VAL
    assert as_stages(stages) is stages
    assert as_stages("test") == {TEST}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("val", VAL), (TEST, TEST), (StageSet("inference"), INFERENCE), ("TRAIN", TRAIN)],
)
def test_as_stage_accepts_one_concrete_stage(value, expected):
    assert as_stage(value) is expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (ALWAYS, "not ALWAYS"),
        ("always", "not ALWAYS"),
        ("train|val", "exactly one stage, got TRAIN|VAL"),
        (TRAIN | TEST, "exactly one stage, got TRAIN|TEST"),
        ("bogus", "unknown execution stage"),
    ],
)
def test_as_stage_rejects_always_combinations_and_unknown_names(value, fragment):
    with pytest.raises(ValueError, match=fragment):
        as_stage(value)


def test_as_stage_rejects_non_stage_types():
    with pytest.raises(TypeError):
        as_stage(5)  # type: ignore[arg-type]


def test_is_concrete_is_false_only_for_always():
    assert [stage.is_concrete for stage in ExecutionStage] == [
        False,
        True,
        True,
        True,
        True,
    ]
