"""Hypothesis strategies for stages, contexts, tensors, batches and pipelines.

Every value is drawn through Hypothesis, never from torch's global random
number generator: a failing example replays with the same tensors whatever
``torch.manual_seed`` says, and shrinks towards small shapes and values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from .._context import Context
from .._pipeline import Pipeline
from .._ports import PortSpec
from .._stages import CONCRETE_STAGES, ExecutionStage, StageSet, as_stage, as_stages
from ._batch import BatchLayout, layout_batch
from ._drafts import pipeline_drafts, stage_set_strategy
from ._synthetic import PipelineDraft

__all__ = [
    "batches",
    "contexts",
    "pipelines",
    "requested_outputs",
    "stage_sets",
    "stages",
    "tensors",
]

# Above this many elements a tensor is filled from a drawn seed, so that
# large fixed shapes do not make Hypothesis draw hundreds of floats.
LIST_LIMIT = 64


def stages() -> st.SearchStrategy[ExecutionStage]:
    """Draw one concrete stage a run can happen in (never ALWAYS).

    Examples
    --------
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import stages
    >>> find(stages(), lambda stage: stage is not ExecutionStage.TRAIN)
    ExecutionStage.VAL
    """
    return st.sampled_from(CONCRETE_STAGES)


def stage_sets() -> st.SearchStrategy[StageSet]:
    """Draw a non-empty set of stages, such as a node's stages.

    Shrinks towards ALWAYS.

    Examples
    --------
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import stage_sets
    >>> find(stage_sets(), lambda stages: ExecutionStage.TRAIN not in stages)
    StageSet(VAL)
    """
    return stage_set_strategy()


def contexts(
    stage: ExecutionStage | str | None = None,
) -> st.SearchStrategy[Context]:
    """Draw a `Context`, in ``stage`` or in a drawn concrete stage.

    Examples
    --------
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import contexts
    >>> find(contexts(stage="val"), lambda context: context.epoch > 1)
    Context(stage=VAL, epoch=2, batch_idx=0, global_step=0)
    """
    stage_strategy = stages() if stage is None else st.just(as_stage(stage))
    return st.builds(
        Context,
        stage=stage_strategy,
        epoch=st.integers(0, 3),
        batch_idx=st.integers(0, 7),
        global_step=st.integers(0, 31),
    )


def _default_elements(dtype: torch.dtype) -> st.SearchStrategy[Any]:
    if dtype is torch.bool:
        return st.booleans()
    if dtype.is_complex:
        return st.complex_numbers(
            max_magnitude=10, allow_nan=False, allow_infinity=False, width=64
        )
    if dtype.is_floating_point:
        if dtype in (torch.float16, torch.bfloat16):
            return st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=16)
        return st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
    info = torch.iinfo(dtype)
    return st.integers(max(-10, info.min), min(10, info.max))


@st.composite
def _seeded_fill(draw: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A large tensor from a drawn seed and range, with a local generator."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point or dtype.is_complex:
        low = draw(st.floats(-10, 10, width=32))
        high = draw(st.floats(low, 10, width=32))
        values = torch.rand(shape, generator=generator) * (high - low) + low
        return values.to(dtype)
    info = torch.iinfo(dtype)
    low = draw(st.integers(max(-10, info.min), min(10, info.max)))
    high = draw(st.integers(low, min(10, info.max)))
    return torch.randint(low, high + 1, shape, generator=generator).to(dtype)


def _values(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    elements: st.SearchStrategy[Any] | None,
) -> st.SearchStrategy[torch.Tensor]:
    count = math.prod(shape)
    if count == 0:
        return st.just(torch.empty(shape, dtype=dtype))
    if count > LIST_LIMIT and elements is None:
        constant = _default_elements(dtype).map(
            lambda value: torch.full(shape, value, dtype=dtype)
        )
        return st.one_of(constant, _seeded_fill(dtype, shape))
    items = elements if elements is not None else _default_elements(dtype)
    return st.lists(items, min_size=count, max_size=count).map(
        lambda values: torch.tensor(values, dtype=dtype).reshape(shape)
    )


def _tensor_dtype(spec: PortSpec) -> torch.dtype:
    if spec.dtype is None:
        return torch.float32
    if isinstance(spec.dtype, torch.dtype):
        return spec.dtype
    raise InvalidArgument(
        f"tensors() needs a torch dtype, but the spec says {spec.dtype!r}; "
        f"draw Python values with hypothesis.strategies instead"
    )


def _check_sides(min_side: int, max_side: int) -> None:
    if not 0 <= min_side <= max_side:
        raise InvalidArgument(
            f"need 0 <= min_side <= max_side, got min_side={min_side}, "
            f"max_side={max_side}"
        )


def tensors(
    spec: PortSpec | None = None,
    *,
    sizes: Mapping[str, int] | None = None,
    min_side: int = 1,
    max_side: int = 4,
    elements: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[torch.Tensor]:
    """Draw tensors that match a `PortSpec`.

    Parameters
    ----------
    spec
        The port spec to satisfy; its dtype defaults to float32. A spec
        without a shape gets tensors of 1 or 2 dims.
    sizes
        Sizes of symbolic dims (``{"C": 3}``); unbound names and ``-1``
        dims are drawn between ``min_side`` and ``max_side``, one size per
        name.
    min_side, max_side
        Bounds of drawn dim sizes.
    elements
        Strategy for the values; defaults to finite values in [-10, 10]
        (booleans for ``torch.bool``).

    Examples
    --------
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import tensors
    >>> spec = PortSpec(dtype=torch.float64, shape=(-1, "C", "C"))
    >>> find(tensors(spec, sizes={"C": 2}), lambda value: value.sum() >= 1)
    tensor([[[0., 0.],
             [0., 1.]]], dtype=torch.float64)
    """
    spec = spec if spec is not None else PortSpec()
    _check_sides(min_side, max_side)
    dtype = _tensor_dtype(spec)
    bound = dict(sizes or {})

    @st.composite
    def draw_tensor(draw: Any) -> torch.Tensor:
        shape = draw(_shape(spec.shape, bound, min_side, max_side))
        return draw(_values(dtype, shape, elements))

    return draw_tensor()


@st.composite
def _shape(
    draw: Any,
    shape: tuple[Any, ...] | None,
    sizes: Mapping[str, int],
    min_side: int,
    max_side: int,
) -> tuple[int, ...]:
    side = st.integers(min_side, max_side)
    if shape is None:
        return tuple(draw(st.lists(side, min_size=1, max_size=2)))
    named = dict(sizes)
    result = []
    for dim in shape:
        if isinstance(dim, str):
            if dim not in named:
                named[dim] = draw(side)
            result.append(named[dim])
        else:
            result.append(dim if dim >= 0 else draw(side))
    return tuple(result)


def _stage_list(stage: Any) -> tuple[ExecutionStage, ...]:
    if stage is None:
        return CONCRETE_STAGES
    return tuple(as_stages(stage))


def batches(
    pipeline: Pipeline,
    stage: ExecutionStage | str | Iterable[ExecutionStage] | None = None,
    *,
    overrides: Mapping[str, st.SearchStrategy[Any]] | None = None,
    min_side: int = 1,
    max_side: int = 4,
) -> st.SearchStrategy[dict[str, Any]]:
    """Draw batches for a pipeline: a value for every input read from the batch.

    The inputs are those that the nodes running in ``stage`` (every stage
    by default) read and no node produces. Required inputs are always in
    the batch, optional ones sometimes. Tensors match the dtype and shape
    of every port that reads them; a symbolic dim name has one size across
    the whole batch, so ``("N", "C")`` on one input and ``("N",)`` on
    another share ``N``. Inputs annotated ``float``, ``int`` or ``bool``
    get small Python numbers.

    Parameters
    ----------
    pipeline
        The pipeline to feed.
    stage
        The stage(s) whose inputs to provide; a batch for several stages
        holds every input any of them reads.
    overrides
        Strategies for some inputs by name, used as given.
    min_side, max_side
        Bounds of the drawn dim sizes.

    Examples
    --------
    >>> from typing import Annotated
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import batches
    >>> @node
    ... def weigh(cube: Annotated[torch.Tensor, PortSpec(shape=("N", "C"))],
    ...           weights: Annotated[torch.Tensor, PortSpec(shape=("C",))],
    ... ) -> torch.Tensor:
    ...     return cube @ weights
    >>> batch = find(batches(Pipeline([weigh])), lambda b: b["weights"].numel() > 2)
    >>> {name: tuple(value.shape) for name, value in batch.items()}
    {'cube': (1, 3), 'weights': (3,)}
    """
    _check_sides(min_side, max_side)
    layout = layout_batch(pipeline.specs, _stage_list(stage), dict(overrides or {}))
    return _draw_batch(layout, min_side, max_side)


@st.composite
def _draw_batch(
    draw: Any, layout: BatchLayout, min_side: int, max_side: int
) -> dict[str, Any]:
    side = st.integers(min_side, max_side)
    sizes = {root: draw(side) for root in layout.free_roots}
    batch: dict[str, Any] = {}
    for name, entry in layout.entries.items():
        if not entry.required and not draw(st.booleans()):
            continue
        if entry.strategy is not None:
            batch[name] = draw(entry.strategy)
            continue
        shape = layout.shape_of(name, sizes)
        if shape is None:
            shape = draw(_shape(None, {}, min_side, max_side))
        batch[name] = draw(_values(entry.dtype, shape, None))
    return batch


def requested_outputs(
    pipeline: Pipeline, stage: ExecutionStage | str
) -> st.SearchStrategy[tuple[str, ...] | None]:
    """Draw ``outputs=`` for a run in ``stage``: None (everything) or some names.

    The names are outputs of nodes that run in ``stage``.

    Examples
    --------
    >>> from hypothesis import find
    >>> from cuvis_dsl.testing import requested_outputs
    >>> @node
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> @node(stages="train")
    ... def noisy(double: int) -> int:
    ...     return double + 1
    >>> find(requested_outputs(Pipeline([double, noisy]), "val"), bool)
    ('double',)
    """
    resolved = as_stage(stage)
    names = sorted(
        {
            port.name
            for spec in pipeline.specs.values()
            if resolved in spec.stages
            for port in spec.outputs
        }
    )
    if not names:
        return st.none()
    subsets = st.lists(st.sampled_from(names), min_size=1, unique=True).map(tuple)
    return st.one_of(st.none(), subsets)


def pipelines(min_nodes: int = 1, max_nodes: int = 8) -> st.SearchStrategy[Pipeline]:
    """Draw valid pipelines of small synthetic nodes.

    The nodes are real ``@node`` functions doing cheap tensor arithmetic
    on ``(N, C)``, ``(N,)`` and 0-d float tensors, with drawn stages and
    roles (node, loss, metric), wired by name: required, optional,
    keyword-only and variadic ports (a list port and ``*args``), renamed
    inputs, a ``Context`` parameter, several outputs, stage variants (two
    nodes with one output name in disjoint stages), rebinding (``x =
    f(x)``) and fan-in names with several producers. Every pipeline is
    acyclic, its node names are unique and every required input is wired
    or read from the batch, so building it never raises. Feed it with
    `batches`; record which nodes ran with `record_calls`.

    Examples
    --------
    >>> from hypothesis import given
    >>> from cuvis_dsl.testing import pipelines
    >>> @given(pipelines(max_nodes=5))
    ... def test_every_stage_plans(pipe):
    ...     for stage in ("train", "val", "test", "inference"):
    ...         pipe.plan(stage)
    >>> test_every_stage_plans()
    """
    if not 1 <= min_nodes <= max_nodes:
        raise InvalidArgument(
            f"need 1 <= min_nodes <= max_nodes, got min_nodes={min_nodes}, "
            f"max_nodes={max_nodes}"
        )
    return pipeline_drafts(min_nodes, max_nodes).map(PipelineDraft.build)
