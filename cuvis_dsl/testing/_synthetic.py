"""Synthetic nodes for generated pipelines: drafts, functions, call records.

A draft describes one node (name, stages, ports, outputs); `build_node`
turns it into a real ``@node`` function whose body does cheap tensor
arithmetic and records each call. Values have one of three kinds: ``"NC"``
(shape ``(N, C)``), ``"N"`` (shape ``(N,)``) and ``"S"`` (a 0-d tensor);
the first input of every node is its *base*, and its outputs are the
base's kind or a reduction of it, so declared shapes always hold.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import attrs
import torch
from torch import Tensor

from .._context import Context
from .._node import loss, metric, node
from .._pipeline import Pipeline
from .._ports import PortSpec
from .._stages import StageSet

__all__ = [
    "Call",
    "InputDraft",
    "NodeDraft",
    "OutputDraft",
    "PipelineDraft",
    "build_node",
    "record_calls",
]

KINDS = ("NC", "N", "S")
FULL_SHAPES: dict[str, tuple[Any, ...]] = {"NC": ("N", "C"), "N": ("N",), "S": ()}
REDUCIBLE = {"NC": ("NC", "N", "S"), "N": ("N", "S"), "S": ("S",)}
GAIN = "gain"

_RECORDER: contextvars.ContextVar[list[Call] | None] = contextvars.ContextVar(
    "cuvis_dsl_synthetic_calls", default=None
)


@attrs.frozen
class Call:
    """One call of a synthetic node: its name, inputs by parameter, result."""

    node: str
    inputs: Mapping[str, Any]
    result: Any


@contextmanager
def record_calls() -> Iterator[list[Call]]:
    """Record every call of a synthetic node made inside the block.

    Only nodes made by `pipelines` record themselves; the records belong
    to the current thread (or task), so concurrent tests do not mix.

    Examples
    --------
    >>> from hypothesis import given, strategies as st
    >>> from cuvis_dsl.testing import batches, pipelines, record_calls
    >>> @given(pipe=pipelines(max_nodes=3), data=st.data())
    ... def test_calls(pipe, data):
    ...     batch = data.draw(batches(pipe, stage="val"))
    ...     with record_calls() as calls:
    ...         pipe.forward(batch=batch, stage="val")
    ...     assert [call.node for call in calls] == list(pipe.plan("val").nodes)
    >>> test_calls()
    """
    calls: list[Call] = []
    token = _RECORDER.set(calls)
    try:
        yield calls
    finally:
        _RECORDER.reset(token)


@attrs.frozen
class InputDraft:
    """One input port of a synthetic node.

    ``form`` is ``"required"``, ``"keyword"`` (keyword-only, required),
    ``"optional"`` (default None), ``"list"`` (variadic list, optional),
    ``"star"`` (``*args``) or ``"gain"`` (a float with default 1.0).
    ``shape`` is the declared shape or None; ``typed`` declares float32.
    """

    param: str
    wire: str
    kind: str
    form: str
    shape: tuple[Any, ...] | None = None
    typed: bool = False
    annotated: bool = True

    @property
    def variadic(self) -> bool:
        return self.form in ("list", "star")

    @property
    def required(self) -> bool:
        return self.form in ("required", "keyword")


@attrs.frozen
class OutputDraft:
    """One output of a synthetic node, with its declared shape."""

    name: str
    kind: str
    shape: tuple[Any, ...] | None = None
    typed: bool = False


@attrs.frozen
class NodeDraft:
    """Everything needed to build one synthetic node.

    ``inputs[0]`` is the base input. ``explicit`` says whether the outputs
    are named with ``outputs=`` (otherwise the single output is named after
    the node). ``context`` is None, ``"context"`` (keyword-only, found by
    name) or ``"ctx"`` (positional first, found by annotation).
    """

    name: str
    stages: StageSet
    inputs: tuple[InputDraft, ...]
    outputs: tuple[OutputDraft, ...]
    role: str = "node"
    explicit: bool = True
    context: str | None = None
    factor: float = 1.0

    def replace(self, **changes: Any) -> NodeDraft:
        return attrs.evolve(self, **changes)


@attrs.frozen
class PipelineDraft:
    """Drafts of every node of a generated pipeline, in creation order.

    ``externals`` maps each batch name to its kind. Creation order is a
    topological order of the pipeline in every stage.
    """

    nodes: tuple[NodeDraft, ...]
    externals: Mapping[str, str]

    def build(self, order: Sequence[int] | None = None) -> Pipeline:
        """Build the pipeline; ``order`` permutes the node list."""
        built = [build_node(draft) for draft in self.nodes]
        if order is not None:
            built = [built[index] for index in order]
        return Pipeline(built)

    def replace_node(self, index: int, draft: NodeDraft) -> PipelineDraft:
        nodes = list(self.nodes)
        nodes[index] = draft
        return attrs.evolve(self, nodes=tuple(nodes))

    def add(self, *drafts: NodeDraft) -> PipelineDraft:
        return attrs.evolve(self, nodes=self.nodes + drafts)


def _tensor_annotation(shape: tuple[Any, ...] | None, typed: bool) -> Any:
    if shape is None and not typed:
        return Tensor
    dtype = torch.float32 if typed else None
    return Annotated[Tensor, PortSpec(dtype=dtype, shape=shape)]


def _input_annotation(port: InputDraft) -> Any:
    if port.form == GAIN:
        return float
    if port.form == "list":
        dtype = torch.float32 if port.typed else None
        return Annotated[
            list[Tensor], PortSpec(dtype=dtype, shape=port.shape, variadic=True)
        ]
    annotation = _tensor_annotation(port.shape, port.typed)
    if port.form == "optional":
        return Optional[annotation]  # noqa: UP045 - a spelling users write
    return annotation


_KINDS_OF_FORM = {
    "required": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "optional": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "list": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    GAIN: inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "star": inspect.Parameter.VAR_POSITIONAL,
    "keyword": inspect.Parameter.KEYWORD_ONLY,
}
_DEFAULTS = {"optional": None, "list": None, GAIN: 1.0}
_GROUP = {"required": 0, "optional": 1, "list": 1, GAIN: 1, "star": 2, "keyword": 3}


def _parameters(draft: NodeDraft) -> tuple[list[inspect.Parameter], dict[str, Any]]:
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    if draft.context == "ctx":
        params.append(inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD))
        annotations["ctx"] = Context
    for port in sorted(draft.inputs, key=lambda p: _GROUP[p.form]):
        default = _DEFAULTS.get(port.form, inspect.Parameter.empty)
        params.append(
            inspect.Parameter(port.param, _KINDS_OF_FORM[port.form], default=default)
        )
        if port.annotated or port.form in ("list", GAIN):
            annotations[port.param] = _input_annotation(port)
    if draft.context == "context":
        params.append(inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY))
    return params, annotations


def _return_annotation(draft: NodeDraft) -> Any:
    parts = [_tensor_annotation(out.shape, out.typed) for out in draft.outputs]
    if len(parts) == 1:
        return parts[0]
    return tuple.__class_getitem__(tuple(parts))


def _items(value: Any) -> list[Tensor]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _reduce(value: Tensor, source: str, target: str) -> Tensor:
    if source == target:
        return value
    return value.mean() if target == "S" else value.mean(dim=-1)


def _compute(draft: NodeDraft, values: Mapping[str, Any]) -> Any:
    base = draft.inputs[0]
    total = values[base.param] * draft.factor
    for port in draft.inputs[1:]:
        value = values.get(port.param)
        if port.form == GAIN:
            total = total * value
            continue
        for item in _items(value):
            total = total + item.mean()
    context = values.get(draft.context) if draft.context else None
    if context is not None:
        total = total + 0.001 * context.epoch
    total = torch.tanh(total)
    results = tuple(
        _reduce(total, base.kind, out.kind) * (index + 1)
        for index, out in enumerate(draft.outputs)
    )
    return results[0] if len(results) == 1 else results


def _synthetic_function(draft: NodeDraft) -> Any:
    params, annotations = _parameters(draft)
    returns = _return_annotation(draft)
    signature = inspect.Signature(params, return_annotation=returns)

    def synthetic(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        result = _compute(draft, values)
        calls = _RECORDER.get()
        if calls is not None:
            calls.append(Call(node=draft.name, inputs=values, result=result))
        return result

    synthetic.__signature__ = signature  # type: ignore[attr-defined]
    synthetic.__annotations__ = {**annotations, "return": returns}
    synthetic.__name__ = synthetic.__qualname__ = draft.name
    synthetic.__doc__ = f"Synthetic node {draft.name!r}."
    return synthetic


_DECORATORS = {"node": node, "loss": loss, "metric": metric}


def build_node(draft: NodeDraft) -> Any:
    """Make the ``@node`` function a draft describes."""
    renames = {p.param: p.wire for p in draft.inputs if p.param != p.wire}
    names = [out.name for out in draft.outputs]
    outputs: Any = None
    if draft.explicit:
        outputs = names[0] if len(names) == 1 else names
    decorate = _DECORATORS[draft.role]
    return decorate(
        _synthetic_function(draft),
        name=draft.name,
        stages=draft.stages,
        outputs=outputs,
        inputs=renames or None,
    )
