"""Plans: which nodes one stage and one request run, in which order."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import Problem, WiringError, did_you_mean, quoted
from ._stages import ExecutionStage, StageSet
from ._wiring import StageWiring, Wiring, missing_input_problem

if TYPE_CHECKING:
    from ._compile import Program

__all__ = ["Plan", "make_plan"]

logger = logging.getLogger("cuvis_dsl")


@attrs.frozen(eq=False)
class Plan:
    """The nodes that one stage and one request run, in order.

    Attributes
    ----------
    stage
        The stage planned for.
    outputs
        The requested output names, or None for every output.
    inputs
        Batch keys the plan reads.
    nodes
        Names of the nodes that run, in execution order.
    skipped
        Every node that does not run, with the reason.

    Examples
    --------
    Printing a plan shows what runs and what is skipped::

        plan for stage VAL (3 of 4 nodes run)
          1. load      () -> cube
          ...
          skipped: augment (runs in TRAIN, not VAL)
    """

    stage: ExecutionStage
    outputs: tuple[str, ...] | None
    inputs: tuple[str, ...]
    nodes: tuple[str, ...]
    skipped: dict[str, str]
    program: Program = attrs.field(repr=False)
    wiring: Wiring = attrs.field(repr=False)

    def __contains__(self, node: object) -> bool:
        return node in self.nodes

    def __str__(self) -> str:
        total = len(self.nodes) + len(self.skipped)
        request = "every output" if self.outputs is None else ", ".join(self.outputs)
        lines = [
            f"plan for stage {self.stage.name} ({len(self.nodes)} of {total} "
            f"nodes run; requested: {request})"
        ]
        if self.inputs:
            lines.append(f"  reads from the batch: {', '.join(self.inputs)}")
        width = max((len(n) for n in self.nodes), default=0)
        for index, name in enumerate(self.nodes, 1):
            spec = self.wiring.specs[name]
            lines.append(f"  {index}. {name:<{width}}  {spec.signature_text()}")
        for name, reason in self.skipped.items():
            lines.append(f"  skipped: {name} ({reason})")
        return "\n".join(lines)


def make_plan(
    wiring: Wiring,
    stage: ExecutionStage,
    outputs: tuple[str, ...] | None,
    batch_keys: frozenset[str],
    targets: Mapping[str, Callable[..., Any]],
    inputs_of: str | None = None,
) -> Plan:
    """Plan one request, raising one `WiringError` with every problem.

    With ``inputs_of``, the plan runs only the nodes upstream of that node
    and returns the values its input ports would receive.
    """
    from ._compile import compile_program

    wired = wiring.stages[stage]
    problems = list(_collisions(wiring, stage, batch_keys))
    if inputs_of is not None:
        needed = _upstream(wired, wiring, inputs_of, problems)
        checked = needed | ({inputs_of} if inputs_of in wired.feeds else set())
    elif outputs is None:
        needed = checked = set(wired.active)
    else:
        needed = checked = _needed(wired, wiring, outputs, batch_keys, problems)
    problems.extend(_missing(wired, wiring, checked, batch_keys))
    if problems:
        raise WiringError.from_problems(
            problems, f"pipeline cannot run in stage {stage.name}"
        )
    order = topological_order(wired, needed)
    request = outputs if inputs_of is None else (f"the inputs of {inputs_of!r}",)
    skipped = _skipped(wiring, wired, needed, request)
    program = compile_program(
        wiring, wired, order, outputs, batch_keys, targets, inputs_of
    )
    plan = Plan(
        stage=stage,
        outputs=outputs,
        inputs=program.batch_keys,
        nodes=tuple(order),
        skipped=skipped,
        program=program,
        wiring=wiring,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s", plan)
    return plan


def _collisions(
    wiring: Wiring, stage: ExecutionStage, batch_keys: frozenset[str]
) -> Iterable[Problem]:
    for key in sorted(batch_keys):
        if wiring.is_internal(key):
            producers = ", ".join(wiring.at(n) for n in wiring.producers[key])
            yield Problem(
                kind="collision",
                node=wiring.producers[key][0],
                port=key,
                stages=StageSet(stage),
                summary=f"batch key {key!r} is also an output of {producers}; "
                "which one consumers should read would be a guess.",
                fix=f"rename the batch key, or the output with "
                f"node(..., outputs='{key}_computed'); to transform a batch "
                f"value in place, let the node read {key!r} and produce no "
                f"other {key!r}",
            )


def _needed(
    wired: StageWiring,
    wiring: Wiring,
    outputs: tuple[str, ...],
    batch_keys: frozenset[str],
    problems: list[Problem],
) -> set[str]:
    roots: list[str] = []
    for name in outputs:
        sources = wired.values.get(name, ())
        owner = wiring.undeclared.get(name)
        if sources:
            roots.extend(node for node, _ in sources)
        elif owner is not None and owner in wired.feeds:
            roots.append(owner)
        elif name not in batch_keys:
            problems.append(_unavailable_output(wiring, wired, name, batch_keys))
    needed: set[str] = set()
    stack = roots
    while stack:
        current = stack.pop()
        if current in needed:
            continue
        needed.add(current)
        for feed in wired.feeds[current]:
            stack.extend(node for node, _ in feed.producers if node not in needed)
    return needed


def _upstream(
    wired: StageWiring, wiring: Wiring, node: str, problems: list[Problem]
) -> set[str]:
    """Every node that feeds ``node`` in this stage, directly or not."""
    if node not in wired.feeds:
        spec = wiring.specs[node]
        problems.append(
            Problem(
                kind="missing",
                node=node,
                port=None,
                stages=StageSet(wired.stage),
                summary=f"node {wiring.at(node)} does not run in {{stages}}: "
                f"its stages are {spec.stages}.",
                fix=f"ask in one of {spec.stages}, or add {{stages}} to its stages",
            )
        )
        return set()
    needed: set[str] = set()
    stack = [p for feed in wired.feeds[node] for p, _ in feed.producers]
    while stack:
        current = stack.pop()
        if current not in needed:
            needed.add(current)
            for feed in wired.feeds[current]:
                stack.extend(p for p, _ in feed.producers if p not in needed)
    return needed


def _unavailable_output(
    wiring: Wiring, wired: StageWiring, name: str, batch_keys: frozenset[str]
) -> Problem:
    makers = wiring.producers.get(name, []) + wiring.rebinders.get(name, [])
    if makers:
        where = ", ".join(
            f"{wiring.at(n)}, which runs in {wiring.specs[n].stages}" for n in makers
        )
        summary = f"requested output {name!r} is produced only by {where}."
        fix = "request it in a stage where its producer runs, or add {stages} to "
        fix += "the producer's stages"
    else:
        known = set(wiring.producers) | set(wiring.rebinders) | set(batch_keys)
        summary = (
            f"requested output {name!r} is not produced by any node."
            f"{did_you_mean(name, known)}"
        )
        fix = f"request one of {quoted(known)}"
    return Problem(
        kind="missing",
        node=None,
        port=name,
        stages=StageSet(wired.stage),
        summary=summary,
        fix=fix,
    )


def _missing(
    wired: StageWiring, wiring: Wiring, needed: set[str], batch_keys: frozenset[str]
) -> Iterable[Problem]:
    available = set(batch_keys) | {n for n, s in wired.values.items() if s}
    for node in sorted(needed):
        for feed in wired.feeds[node]:
            external = feed.external
            if external is None or feed.port.optional or external in batch_keys:
                continue
            yield missing_input_problem(node, feed.port, wiring, wired.stage, available)


def topological_order(wired: StageWiring, needed: set[str]) -> list[str]:
    """Kahn's algorithm, ties broken by node name so the order is stable."""
    dependents: dict[str, list[str]] = {node: [] for node in needed}
    waiting: dict[str, int] = {}
    for node in needed:
        producers = {p for feed in wired.feeds[node] for p, _ in feed.producers}
        waiting[node] = len(producers)
        for producer in producers:
            dependents[producer].append(node)
    ready = [node for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    return order


def _skipped(
    wiring: Wiring,
    wired: StageWiring,
    needed: set[str],
    outputs: tuple[str, ...] | None,
) -> dict[str, str]:
    skipped = {}
    for name, spec in sorted(wiring.specs.items()):
        if name in needed:
            continue
        if name not in wired.feeds:
            skipped[name] = f"runs in {spec.stages}, not {wired.stage.name}"
        else:
            skipped[name] = f"not needed for {', '.join(outputs or ())}"
    return skipped
