"""The individual checks of `check_pipeline`, over observed node calls.

Each check raises `Finding` for the first problem it sees; the checker
adds the stage, batch and context and turns it into the public error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch

from .._ports import Bindings, Port, SpecViolation, compile_check, summarize
from .._spec import NodeSpec
from .._stages import ExecutionStage
from ._observe import Observation
from ._reference import Expected

__all__ = [
    "Finding",
    "check_executed",
    "check_grad",
    "check_mutation",
    "check_roles",
    "check_specs",
    "check_same_runs",
    "same_value",
]


class Finding(Exception):
    """Internal: one broken property, before the stage and batch are added."""

    def __init__(
        self,
        check: str,
        headline: str,
        *,
        node: str | None = None,
        port: str | None = None,
        details: Sequence[str] = (),
        fix: str,
    ) -> None:
        super().__init__(headline)
        self.check = check
        self.headline = headline
        self.node = node
        self.port = port
        self.details = tuple(details)
        self.fix = fix


def _names(nodes: Iterable[str]) -> str:
    listed = ", ".join(repr(n) for n in sorted(nodes))
    return listed or "(none)"


def check_executed(
    plan_nodes: Sequence[str],
    observations: Sequence[Observation],
    expected: Expected,
) -> None:
    """The plan and the calls match the nodes the specs say must run, in order."""
    called = [obs.node for obs in observations]
    if set(plan_nodes) != expected.needed:
        extra = set(plan_nodes) - expected.needed
        missing = expected.needed - set(plan_nodes)
        raise Finding(
            "plan",
            "the plan does not run exactly the nodes that are allowed and needed.",
            node=min(extra | missing),
            details=(
                f"planned but not needed or not allowed: {_names(extra)}",
                f"needed and allowed but not planned: {_names(missing)}",
            ),
            fix="report this with the pipeline: plans follow the node specs",
        )
    if called != list(plan_nodes):
        raise Finding(
            "calls",
            "the nodes called differ from the plan.",
            node=next((a for a, b in zip(called, plan_nodes) if a != b), None),
            details=(f"called: {called}", f"planned: {list(plan_nodes)}"),
            fix="make sure nodes do not call the pipeline or each other",
        )
    _check_order(called, expected)


def _check_order(called: Sequence[str], expected: Expected) -> None:
    seen: set[str] = set()
    for name in called:
        late = expected.sources[name] - seen
        if late:
            raise Finding(
                "order",
                f"node {name!r} ran before its source {_names(late)}.",
                node=name,
                fix="report this with the pipeline: the order must be topological",
            )
        seen.add(name)


def output_values(spec: NodeSpec, result: Any) -> list[tuple[Port, Any]]:
    """The declared outputs of one call with their values."""
    if spec.returns == "single":
        return [(spec.outputs[0], result)]
    if spec.returns != "several":
        return []
    if isinstance(result, Mapping):
        return [(p, result[p.name]) for p in spec.outputs if p.name in result]
    if isinstance(result, (tuple, list)) and len(result) == len(spec.outputs):
        return list(zip(spec.outputs, result))
    return []


def _check_value(
    port: Port, value: Any, bindings: Bindings, node: str, direction: str
) -> None:
    check = compile_check(port.annotation, port.spec)
    if check is None:
        return
    items = (
        list(value) if port.variadic and isinstance(value, (list, tuple)) else [value]
    )
    for item in items:
        if item is None and port.optional:
            continue
        try:
            check(item, bindings, port.name)
        except SpecViolation as violation:
            raise Finding(
                "spec",
                f"{direction} {port.name!r} of node {node!r} does not match its "
                f"declared spec: {violation.reason}.",
                node=node,
                port=port.name,
                details=(f"declared: {port.describe()}",),
                fix=f"make {node!r} keep its declared {direction} spec for every "
                f"batch, or loosen the annotation",
            ) from None


def check_specs(
    specs: Mapping[str, NodeSpec], observations: Iterable[Observation]
) -> None:
    """Every input and output of every call matches its port spec."""
    for obs in observations:
        spec = specs[obs.node]
        bindings: Bindings = {}
        for port in spec.inputs:
            if port.name in obs.arguments:
                _check_value(
                    port, obs.arguments[port.name], bindings, obs.node, "input"
                )
        if obs.finished:
            for port, value in output_values(spec, obs.result):
                _check_value(port, value, bindings, obs.node, "output")


def _tensors(value: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{path}[{index}]")
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _tensors(getattr(value, field.name), f"{path}.{field.name}")


def check_grad(stage: ExecutionStage, observations: Iterable[Observation]) -> None:
    """Outside TRAIN, no node makes or returns a tensor that requires grad."""
    for obs in observations:
        found = [f"made by {obs.grad_op}"] if obs.grad_op else []
        found += [
            f"returned as {path}: {summarize(tensor)}"
            for path, tensor in _tensors(obs.result, "result")
            if tensor.requires_grad
        ]
        if found:
            raise Finding(
                "grad",
                f"node {obs.node!r} creates a tensor that requires grad in "
                f"{stage.name}, where the run has autograd turned off.",
                node=obs.node,
                details=found[:1],
                fix="do not create tensors with requires_grad=True, call "
                "requires_grad_() or torch.enable_grad(), or return parameters "
                "as they are outside TRAIN; use .detach() or restrict the node "
                "to TRAIN",
            )


def check_mutation(observations: Iterable[Observation]) -> None:
    """No node changes one of its input tensors in place."""
    for obs in observations:
        if obs.mutated:
            raise Finding(
                "mutation",
                f"node {obs.node!r} changes its input {obs.mutated[0]!r} in place.",
                node=obs.node,
                port=obs.mutated[0],
                fix="compute a new tensor (x = x * 2, not x.mul_(2)); other nodes "
                "and later runs read the same value",
            )


def check_roles(
    specs: Mapping[str, NodeSpec], stage: ExecutionStage, result: Mapping[str, Any]
) -> None:
    """Loss and metric outputs appear exactly in their nodes' stages."""
    for role in ("loss", "metric"):
        makers = [spec for spec in specs.values() if spec.role == role]
        present = {
            n for spec in makers if stage in spec.stages for n in spec.output_names
        }
        for spec in makers:
            for name in spec.output_names:
                if (name in result) != (name in present):
                    raise Finding(
                        "roles",
                        f"{role} output {name!r} of node {spec.name!r} is "
                        f"{'present' if name in result else 'missing'} in a "
                        f"{stage.name} run; its stages are {spec.stages}.",
                        node=spec.name,
                        port=name,
                        fix="report this with the pipeline: a run returns the "
                        "outputs of the nodes running in its stage",
                    )


def same_value(a: Any, b: Any) -> bool:
    """Equal values, with NaN equal to NaN; values without equality count as same."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return _same_tensor(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if attrs.has(type(a)) and type(a) is type(b):
        return same_value(
            attrs.asdict(a, recurse=False), attrs.asdict(b, recurse=False)
        )
    if type(a).__eq__ is object.__eq__:
        return True
    try:
        return bool(a == b) or (a != a and b != b)
    except (TypeError, ValueError, RuntimeError):
        return True


def _same_tensor(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a.isnan(), b.isnan())) and bool(
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
        )
    return bool(torch.equal(a, b))


def check_same_runs(
    specs: Mapping[str, NodeSpec],
    first: Sequence[Observation],
    second: Sequence[Observation],
    stage: ExecutionStage,
) -> None:
    """Two runs on one batch and context call the same nodes with the same results."""
    for one, two in zip(first, second):
        if one.node != two.node or same_value(one.result, two.result):
            continue
        ports = output_values(specs[one.node], one.result)
        again = dict((p.name, v) for p, v in output_values(specs[one.node], two.result))
        port = next(
            (p.name for p, v in ports if not same_value(v, again.get(p.name))), None
        )
        raise Finding(
            "deterministic",
            f"node {one.node!r} returned different values for the same batch and "
            f"context in {stage.name}.",
            node=one.node,
            port=port,
            details=(f"{port or 'result'}: {_difference(one.result, two.result)}",),
            fix=f"outside TRAIN, draw random numbers from a torch.Generator seeded "
            f"from the context, or run {one.node!r} only in TRAIN",
        )


def _difference(first: Any, second: Any) -> str:
    pairs = list(zip(_tensors(first, ""), _tensors(second, "")))
    for (_, a), (_, b) in pairs:
        if a.shape == b.shape and a.dtype == b.dtype and not _same_tensor(a, b):
            gap = (a.double() - b.double()).abs().nan_to_num(float("inf")).max()
            return f"{summarize(a)} in both runs, largest difference {gap.item():.3g}"
    return f"{summarize(first)} in the first run, {summarize(second)} in the second"
