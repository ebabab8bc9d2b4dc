"""Execution stages and sets of them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import Enum

__all__ = ["ExecutionStage", "StageSet", "StagesLike", "as_stage", "as_stages"]


class ExecutionStage(str, Enum):
    """The stage a pipeline runs in, or one a node runs in.

    A run happens in one concrete stage (``TRAIN``, ``VAL``, ``TEST`` or
    ``INFERENCE``). ``ALWAYS`` stands for all four and is only meaningful in a
    node's stages. Members combine with ``|`` into a `StageSet`, and a
    member compares equal to its lower-case value.

    Examples
    --------
    >>> ExecutionStage.TRAIN | ExecutionStage.VAL
    StageSet(TRAIN|VAL)
    >>> ExecutionStage("val") is ExecutionStage.VAL
    True
    >>> ExecutionStage.TEST.value
    'test'
    """

    ALWAYS = "always"
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    INFERENCE = "inference"

    @classmethod
    def _missing_(cls, value: object) -> ExecutionStage:
        if isinstance(value, str):
            folded = value.strip().lower()
            for member in cls:
                if member.value == folded:
                    return member
        raise ValueError(_unknown_stage_message(value))

    def __or__(self, other: object) -> StageSet:  # type: ignore[override]
        return StageSet(self) | as_stages(other)  # type: ignore[arg-type]

    def __ror__(self, other: object) -> StageSet:
        return as_stages(other) | StageSet(self)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"ExecutionStage.{self.name}"

    def __str__(self) -> str:
        return self.name

    __hash__ = str.__hash__

    @property
    def is_concrete(self) -> bool:
        """Whether a run can happen in this stage (everything but ALWAYS)."""
        return self is not ExecutionStage.ALWAYS


CONCRETE_STAGES: tuple[ExecutionStage, ...] = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
)


def _unknown_stage_message(value: object) -> str:
    names = [member.value for member in ExecutionStage]
    message = f"unknown execution stage {value!r}; valid stages: {', '.join(names)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value.strip().lower(), names, n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
    return message


class StageSet(frozenset):  # type: ignore[type-arg]
    """An immutable set of concrete stages, such as a node's stages.

    ``ALWAYS`` is expanded into the four concrete stages, so
    ``StageSet(ALWAYS) == TRAIN | VAL | TEST | INFERENCE``. A `StageSet`
    equals the plain set of the same members.

    Examples
    --------
    >>> stages = StageSet("train|val")
    >>> ExecutionStage.VAL in stages, ExecutionStage.TEST in stages
    (True, False)
    >>> StageSet({ExecutionStage.ALWAYS})
    StageSet(ALWAYS)
    """

    def __new__(cls, stages: StagesLike = ()) -> StageSet:
        return super().__new__(cls, _expand(stages))

    def __contains__(self, stage: object) -> bool:
        if stage is ExecutionStage.ALWAYS:
            return len(self) == len(CONCRETE_STAGES)
        return frozenset.__contains__(self, stage)

    def __or__(self, other: object) -> StageSet:  # type: ignore[override]
        return StageSet(frozenset.union(self, _expand(other)))  # type: ignore[arg-type]

    __ror__ = __or__

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([stage for stage in CONCRETE_STAGES if stage in self])

    def __repr__(self) -> str:
        return f"StageSet({self})"

    def __str__(self) -> str:
        if len(self) == len(CONCRETE_STAGES):
            return "ALWAYS"
        if not self:
            return "(none)"
        return "|".join(stage.name for stage in self)


StagesLike = ExecutionStage | StageSet | str | Iterable[ExecutionStage | str]


def _expand(stages: object) -> frozenset[ExecutionStage]:
    if isinstance(stages, StageSet):
        return frozenset(stages)
    if isinstance(stages, str):
        parts = [part for part in stages.split("|") if part.strip()]
        if not parts:
            raise ValueError(_unknown_stage_message(stages))
        return frozenset().union(*(_expand_one(part) for part in parts))
    if isinstance(stages, Iterable):
        result: frozenset[ExecutionStage] = frozenset()
        for item in stages:
            if not isinstance(item, (str, ExecutionStage)):
                raise TypeError(_not_a_stage_message(item))
            result |= _expand(item)
        return result
    raise TypeError(_not_a_stage_message(stages))


def _parse(value: str | ExecutionStage) -> ExecutionStage:
    """``ExecutionStage(value)``, with the error raised here, not inside enum."""
    try:
        return ExecutionStage(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _expand_one(value: str | ExecutionStage) -> frozenset[ExecutionStage]:
    stage = _parse(value)
    if stage is ExecutionStage.ALWAYS:
        return frozenset(CONCRETE_STAGES)
    return frozenset((stage,))


def _not_a_stage_message(value: object) -> str:
    return (
        f"expected stages as an ExecutionStage, a set of them or a string such "
        f"as 'train|val', got {type(value).__name__} {value!r}"
    )


def as_stages(value: StagesLike) -> StageSet:
    """Normalise anything accepted as stages into a `StageSet`."""
    return value if isinstance(value, StageSet) else StageSet(value)


def as_stage(value: ExecutionStage | StageSet | str) -> ExecutionStage:
    """Normalise one concrete stage, rejecting ALWAYS and combinations."""
    if isinstance(value, StageSet):
        if len(value) == 1:
            return next(iter(value))
        raise ValueError(
            f"a run happens in exactly one stage, got {value}; "
            f"use one of {', '.join(s.name for s in CONCRETE_STAGES)}"
        )
    if not isinstance(value, (str, ExecutionStage)):
        raise TypeError(_not_a_stage_message(value))
    if isinstance(value, str) and not isinstance(value, ExecutionStage):
        if "|" in value:
            return as_stage(StageSet(value))
    stage = _parse(value)
    if not stage.is_concrete:
        raise ValueError(
            "a run happens in exactly one concrete stage, not ALWAYS; "
            f"use one of {', '.join(s.name for s in CONCRETE_STAGES)}"
        )
    return stage
