"""Watching a pipeline run: which nodes are called, with what, returning what.

`observed_copy` builds a second pipeline with the same specs whose nodes
wrap the original call targets; the original pipeline and its nodes are
not changed. `trainer_conditions` sets grad mode and module modes the
way the trainer does for a stage, and restores them afterwards.
"""

from __future__ import annotations

import contextvars
import inspect
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch.overrides import TorchFunctionMode

from .._errors import CuvisDSLWarning
from .._node import call_target_of
from .._pipeline import Pipeline
from .._ports import summarize
from .._spec import NodeSpec
from .._stages import ExecutionStage

__all__ = [
    "Observation",
    "observed_copy",
    "observing",
    "preserved_state",
    "trainer_conditions",
]

_PENDING = object()


@attrs.define
class Observation:
    """One node call: arguments by parameter name, the result, inputs changed.

    ``grad_op`` names the first torch operation inside the call that made a
    tensor requiring grad, when calls are watched for that.
    """

    node: str
    arguments: dict[str, Any]
    result: Any = _PENDING
    mutated: tuple[str, ...] = ()
    grad_op: str | None = None

    @property
    def finished(self) -> bool:
        return self.result is not _PENDING


@attrs.frozen
class _Recorder:
    calls: list[Observation]
    watch_grad: bool


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "cuvis_dsl_observations", default=None
)


@contextmanager
def observing(watch_grad: bool = False) -> Iterator[list[Observation]]:
    """Collect the observations of observed nodes called inside the block."""
    recorder = _Recorder(calls=[], watch_grad=watch_grad)
    token = _RECORDER.set(recorder)
    try:
        yield recorder.calls
    finally:
        _RECORDER.reset(token)


class _GradWatch(TorchFunctionMode):
    """Notes the first torch operation whose result requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def __torch_function__(
        self, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if self.first is None and isinstance(result, torch.Tensor):
            if result.requires_grad:
                self.first = f"{_op_name(func)}(...) -> {summarize(result)}"
        return result


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", repr(func))
    if getattr(torch, name, None) is func:
        return f"torch.{name}"
    if getattr(torch.Tensor, name, None) is not None:
        return f"Tensor.{name}"
    return name


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def _versions(arguments: Mapping[str, Any]) -> dict[str, list[int]]:
    found = {}
    for name, value in arguments.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        found[name] = [
            item._version for item in items if isinstance(item, torch.Tensor)
        ]
    return found


class ObservedNode(torch.nn.Module):
    """A node that calls another node's target and records the call."""

    def __init__(self, spec: NodeSpec, target: Any) -> None:
        super().__init__()
        self._spec = spec
        if isinstance(target, torch.nn.Module):
            self.inner = target
        else:
            self._target = target
        self._signature = _signature(target)

    def node_spec(self) -> NodeSpec:
        return self._spec

    def _call_target(self) -> Any:
        return self.inner if "inner" in self._modules else self._target

    def _arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if self._signature is not None:
            try:
                return dict(self._signature.bind(*args, **kwargs).arguments)
            except TypeError:
                pass
        positional = [p.name for p in self._spec.inputs if p.kind != "keyword"]
        return {**dict(zip(positional, args)), **kwargs}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        recorder = _RECORDER.get()
        observation = Observation(self._spec.name, self._arguments(args, kwargs))
        if recorder is not None:
            recorder.calls.append(observation)
        before = _versions(observation.arguments)
        if recorder is not None and recorder.watch_grad:
            with _GradWatch() as watch:
                observation.result = self._call_target()(*args, **kwargs)
            observation.grad_op = watch.first
        else:
            observation.result = self._call_target()(*args, **kwargs)
        after = _versions(observation.arguments)
        observation.mutated = tuple(n for n in before if before[n] != after[n])
        return observation.result


def observed_copy(pipeline: Pipeline) -> Pipeline:
    """A pipeline with the same specs whose every node call is observed."""
    wrapped = [
        ObservedNode(spec, call_target_of(pipeline.nodes[name]))
        for name, spec in pipeline.specs.items()
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CuvisDSLWarning)
        return Pipeline(wrapped, checks=False)


@contextmanager
def trainer_conditions(
    pipeline: torch.nn.Module, stage: ExecutionStage
) -> Iterator[None]:
    """Grad and module modes as the trainer sets them for ``stage``.

    TRAIN runs in train mode with autograd; every other stage in eval mode
    without autograd. Modes and grad state are restored afterwards.
    """
    modes = [(module, module.training) for module in pipeline.modules()]
    grad = torch.is_grad_enabled()
    training = stage is ExecutionStage.TRAIN
    try:
        pipeline.train(training)
        torch.set_grad_enabled(training)
        yield
    finally:
        torch.set_grad_enabled(grad)
        for module, mode in modes:
            module.training = mode


@contextmanager
def preserved_state(pipeline: torch.nn.Module) -> Iterator[None]:
    """Put parameters, buffers and torch's CPU random state back afterwards.

    Running TRAIN batches may update buffers (batch-norm statistics) and
    nodes may draw from the global random generator; a check should leave
    neither changed.
    """
    saved = {
        name: value.detach().clone()
        for name, value in pipeline.state_dict(keep_vars=True).items()
        if isinstance(value, torch.Tensor)
    }
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            _restore(pipeline, saved)


def _restore(pipeline: torch.nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    current = pipeline.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in saved.items():
            target = current.get(name)
            if isinstance(target, torch.Tensor) and target.shape == value.shape:
                target.copy_(value)
