"""Phase one of training: statistical initialisation of module nodes.

A *statistical node* is a module node with a ``statistical_initialization
(self, stream)`` method (and no ``requires_initial_fit`` that is False).
Each is fed a stream with one item per batch: a dict of its input port
names to the values the pipeline would pass it in the statistical stage,
computed by its upstream nodes, which are initialised first.

The items come from `Pipeline.inputs_of`, which runs only the node's
upstream nodes, so the stream follows the wiring, stage gating, rebinding
and defaults exactly as a real run would, and the node itself never runs.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ._checkpoint import capture_rng, restore_rng
from ._context import Context
from ._errors import CuvisDSLWarning, quoted
from ._stages import ExecutionStage
from ._state import is_initialized, mark_initialized
from ._state import is_statistical as defines_statistics

__all__ = [
    "Batches",
    "InputStream",
    "fit_statistics",
    "is_initialized",
    "is_statistical",
    "mark_initialized",
    "statistical_nodes",
    "warn_uninitialized",
]


def is_statistical(item: object) -> bool:
    """Whether ``item`` takes part in statistical initialisation.

    It must be a module with a ``statistical_initialization`` method whose
    ``requires_initial_fit`` (cuvis.ai's switch), if present, is not False.
    """
    if not isinstance(item, torch.nn.Module) or not defines_statistics(item):
        return False
    return bool(getattr(item, "requires_initial_fit", True))


def statistical_nodes(pipeline: Any, stage: ExecutionStage) -> list[str]:
    """Names of the statistical nodes, upstream ones first.

    Raises when one of them does not run in ``stage``: its stream could
    not be computed there.
    """
    names = [name for name, item in pipeline.nodes.items() if is_statistical(item)]
    outside = [name for name in names if stage not in pipeline.specs[name].stages]
    if outside:
        first = outside[0]
        raise ValueError(
            f"statistical node(s) {quoted(outside)} do not run in "
            f"{stage.name}, the stage the statistical initialisation stream "
            f"runs in (stages of {first!r}: {pipeline.specs[first].stages}).\n"
            f"  Fix: Trainer(..., statistical_stage=...) with a stage they run "
            f"in, or add {stage.name} to their stages"
        )
    order = pipeline.plan(stage).nodes
    return sorted(names, key=order.index)


def warn_uninitialized(
    pipeline: Any, stage: ExecutionStage, stacklevel: int = 2
) -> None:
    """Warn when statistical nodes that run in ``stage`` are not initialised.

    ``stacklevel`` counts from the caller, as for `warnings.warn`.
    """
    pending = [
        name
        for name, item in pipeline.nodes.items()
        if stage in pipeline.specs[name].stages
        and is_statistical(item)
        and not is_initialized(item)
    ]
    if pending:
        warnings.warn(
            f"statistical node(s) {quoted(pending)} are not initialised; "
            f"running stage {stage.name} with them anyway.\n  Fix: call "
            f"trainer.statistical_initialization(train_batches) or "
            f"trainer.fit(...) first, or load a trained state",
            CuvisDSLWarning,
            stacklevel=stacklevel + 1,
        )


class Batches:
    """An iterable of batches that can say when it is empty or used up.

    Lists, DataLoaders and other re-iterable sources can be iterated many
    times. A one-shot iterator (a generator) can be iterated once; a second
    pass raises instead of silently yielding nothing.
    """

    def __init__(self, source: Iterable[Any], role: str) -> None:
        if isinstance(source, Mapping) or not isinstance(source, Iterable):
            raise TypeError(
                f"the {role} batches must be an iterable of dicts (a list, a "
                f"DataLoader, a generator), got {type(source).__name__}.\n"
                f"  Fix: wrap a single batch in a list: [batch]"
            )
        self.role = role
        self._source = source
        # Not iter(source) is source: that would start a DataLoader's
        # workers and draw its shuffling seed from the random generator.
        self._one_shot = isinstance(source, Iterator)
        self._used = False
        self._peeked: list[Any] = []

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def known_length(self) -> int | None:
        try:
            return len(self._source)  # type: ignore[arg-type]
        except TypeError:
            return None

    def is_empty(self) -> bool:
        """Whether there is no batch, looking ahead when the length is unknown."""
        length = self.known_length()
        if length is not None:
            return length == 0
        return self.first() is None

    def first(self) -> Any:
        """The first batch, or None when there is none; iterating still yields it.

        Looking ahead leaves the random generators as they were, so that a
        shuffling DataLoader still yields the order it would have yielded.
        """
        if self._one_shot:
            if not self._peeked:
                self._peeked = list(itertools.islice(self._source, 1))
            return self._peeked[0] if self._peeked else None
        state = capture_rng()
        try:
            return next(iter(self._source), None)
        finally:
            restore_rng(state)

    def __iter__(self) -> Iterator[Any]:
        if not self._one_shot:
            return iter(self._source)
        if self._used:
            raise TypeError(
                f"the {self.role} batches are a one-shot iterator (such as a "
                f"generator) and were already used up; they are needed again "
                f"here.\n  Fix: pass a list or a DataLoader, which can be "
                f"iterated once per epoch and per statistical node"
            )
        self._used = True
        peeked, self._peeked = self._peeked, []
        return itertools.chain(peeked, self._source)


class InputStream:
    """The stream handed to ``statistical_initialization``: one dict per batch.

    Each item maps the node's input port names to values computed by its
    upstream nodes in the statistical stage. Iterating again recomputes the
    items from the batches (so a node may make several passes, when the
    batches can be iterated several times). ``len(stream)`` is the number
    of batches when the source knows it.

    Examples
    --------
    >>> @node(outputs="x")
    ... class Peek(torch.nn.Module):
    ...     def statistical_initialization(self, stream):
    ...         self.seen = [sorted(item) for item in stream], len(stream)
    ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
    ...         return x
    >>> peek = Peek()
    >>> trainer = Trainer(Pipeline([peek]), progress=False)
    >>> trainer.statistical_initialization([{"x": torch.ones(2)}] * 2)
    ['peek']
    >>> peek.seen
    ([['x'], ['x']], 2)
    """

    def __init__(
        self,
        pipeline: Any,
        name: str,
        batches: Batches,
        stage: ExecutionStage,
        prepare: Callable[[Any], Any],
        global_step: int = 0,
        wrap: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    ) -> None:
        self.node = name
        self._pipeline = pipeline
        self._batches = batches
        self._stage = stage
        self._prepare = prepare
        self._global_step = global_step
        self._wrap = wrap
        self.batches_seen = 0

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self._batches if self._wrap is None else self._wrap(self._batches)
        for batch_idx, batch in enumerate(batches):
            context = Context(
                stage=self._stage, batch_idx=batch_idx, global_step=self._global_step
            )
            self.batches_seen += 1
            yield self._pipeline.inputs_of(
                self.node, batch=self._prepare(batch), context=context
            )


def fit_statistics(
    pipeline: Any,
    name: str,
    batches: Batches,
    stage: ExecutionStage,
    prepare: Callable[[Any], Any],
    wrap: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    global_step: int = 0,
) -> None:
    """Run one node's ``statistical_initialization`` on its stream; mark it.

    Empty batches are refused before the node sees anything, so its
    buffers are never filled from zero samples.
    """
    if batches.is_empty():
        raise ValueError(
            f"statistical node {name!r} received zero samples: the {batches.role} "
            f"batches are empty, so statistical initialisation cannot fit it "
            f"(it stays uninitialised).\n  Fix: pass non-empty training data "
            f"(with drop_last=True, at least one full batch)"
        )
    stream = InputStream(pipeline, name, batches, stage, prepare, global_step, wrap)
    module = pipeline.nodes[name]
    module.statistical_initialization(stream)
    if stream.batches_seen == 0:
        raise ValueError(
            f"statistical node {name!r} did not read its stream: its "
            f"statistical_initialization returned without iterating it.\n"
            f"  Fix: iterate the stream argument (for item in stream: ...)"
        )
    mark_initialized(module)
