"""The library's exceptions and warnings, on built-in bases."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import attrs

from ._stages import StageSet

__all__ = [
    "CuvisDSLWarning",
    "CycleError",
    "DefinitionError",
    "DuplicateOutputError",
    "MissingInputError",
    "PortValidationError",
    "Problem",
    "SpecMismatchError",
    "WiringError",
    "did_you_mean",
]


class CuvisDSLWarning(UserWarning):
    """Something in a pipeline that is allowed but probably not meant."""


class DefinitionError(TypeError):
    """A node is declared in a way the library cannot turn into ports.

    Raised at decoration (or when a class-form node is built), so the
    traceback points at the definition.

    Attributes
    ----------
    node
        Name of the node, or of the function being decorated.
    port
        Name of the offending parameter or output, if there is one.
    """

    def __init__(self, message: str, *, node: str, port: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.port = port


@attrs.frozen
class Problem:
    """One problem found while wiring a pipeline.

    ``summary`` may contain ``{stages}``, filled with the stages in which the
    problem occurs when the report is rendered.
    """

    kind: str
    node: str | None
    port: str | None
    stages: StageSet
    summary: str
    details: tuple[str, ...] = ()
    fix: str | None = None
    involved: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [self.summary, *self.details]
        if self.fix:
            lines.append(f"Fix: {self.fix}")
        text = "\n     ".join(lines)
        return text.replace("{stages}", _stage_words(self.stages))


def _stage_words(stages: StageSet) -> str:
    if len(stages) == 4:
        return "every stage"
    return ", ".join(stage.name for stage in stages)


def merge_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Merge problems that differ only in their stage, keeping first-seen order."""
    merged: dict[tuple[object, ...], Problem] = {}
    for problem in problems:
        key = (
            problem.kind,
            problem.node,
            problem.port,
            problem.summary,
            problem.details,
            problem.fix,
        )
        if key in merged:
            old = merged[key]
            merged[key] = attrs.evolve(old, stages=old.stages | problem.stages)
        else:
            merged[key] = problem
    return list(merged.values())


class WiringError(ValueError):
    """A pipeline cannot be wired: every problem found, in one report.

    The raised class is the subclass matching the problems' kind when they
    all share one (`CycleError`, `DuplicateOutputError`, `MissingInputError`,
    `SpecMismatchError`), and `WiringError` itself otherwise.

    Attributes
    ----------
    problems
        The problems, each with ``kind``, ``node``, ``port`` and ``stages``.
    """

    kind: str | None = None

    def __init__(self, problems: Sequence[Problem], headline: str) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        body = "\n".join(
            f"  {index}. {problem.render()}"
            for index, problem in enumerate(self.problems, 1)
        )
        super().__init__(f"{headline} ({count} {noun}):\n{body}")

    @property
    def nodes(self) -> tuple[str, ...]:
        """Names of the nodes involved, in report order, without repeats.

        For a cycle, every node on it, in the order of the cycle.
        """
        names = (
            name
            for problem in self.problems
            for name in (problem.node, *problem.involved)
            if name is not None
        )
        return tuple(dict.fromkeys(names))

    @property
    def stages(self) -> StageSet:
        """Every stage in which some problem occurs."""
        result = StageSet()
        for problem in self.problems:
            result = result | problem.stages
        return result

    @classmethod
    def from_problems(cls, problems: Sequence[Problem], headline: str) -> WiringError:
        """Build the most specific error class for these problems."""
        kinds = {problem.kind for problem in problems}
        error_class = cls
        if len(kinds) == 1:
            error_class = _ERROR_BY_KIND.get(kinds.pop(), cls)
        return error_class(problems, headline)


class CycleError(WiringError):
    """Nodes feed each other in a loop."""

    kind = "cycle"


class DuplicateOutputError(WiringError):
    """Several nodes produce one name for a consumer that takes only one."""

    kind = "duplicate"


class MissingInputError(WiringError):
    """A required input has nothing to feed it in some stage."""

    kind = "missing"


class SpecMismatchError(WiringError):
    """A producer's declared output cannot satisfy its consumer's port."""

    kind = "spec"


_ERROR_BY_KIND: dict[str, type[WiringError]] = {
    error.kind: error  # type: ignore[misc]
    for error in (
        CycleError,
        DuplicateOutputError,
        MissingInputError,
        SpecMismatchError,
    )
}


class PortValidationError(ValueError):
    """A value arriving at a port does not match the port's spec.

    Attributes
    ----------
    node
        Name of the node whose port rejected the value.
    port
        Name of the port.
    stage
        Stage of the run.
    producer
        Name of the producing node, or ``"external input"``.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        port: str,
        stage: object,
        producer: str,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.port = port
        self.stage = stage
        self.producer = producer


def did_you_mean(name: str, available: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for a close match, or an empty string."""
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def quoted(names: Iterable[str], limit: int = 12) -> str:
    """Render names as a short quoted list for messages."""
    items = sorted(set(names))
    if not items:
        return "(nothing)"
    shown = ", ".join(repr(name) for name in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
