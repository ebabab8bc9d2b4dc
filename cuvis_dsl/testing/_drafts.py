"""Drawing drafts of valid synthetic pipelines.

Nodes are drafted in an order that is topological in every stage: a node
reads only names that exist when it is drafted, a stage variant is drafted
right after its twin, and a rebinder of a name right after the name's
producers, before anything else reads it. Every choice is drawn from a
list of candidates that is valid by construction, so nothing is filtered.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs
from hypothesis import strategies as st

from .._stages import CONCRETE_STAGES, StageSet
from ._synthetic import (
    FULL_SHAPES,
    GAIN,
    KINDS,
    REDUCIBLE,
    InputDraft,
    NodeDraft,
    OutputDraft,
    PipelineDraft,
)

__all__ = ["pipeline_drafts", "stage_set_strategy"]

T = TypeVar("T")

ALL = StageSet(CONCRETE_STAGES)
LOOSE_SHAPES: dict[str, list[tuple[Any, ...] | None]] = {
    "NC": [("N", "C"), (-1, "C"), ("N", -1), (-1, -1), None],
    "N": [("N",), (-1,), None],
    "S": [(), None],
}
EXTRA_FORMS = ("optional", "required", "list", "keyword", "star", GAIN)
ROLE_OUTPUT_KINDS = {"loss": ("S",), "metric": ("S",)}


@functools.cache
def stage_set_strategy(within: StageSet = ALL) -> st.SearchStrategy[StageSet]:
    """Non-empty subsets of ``within``, shrinking towards all of it."""
    members = list(within)
    subsets = st.sets(st.sampled_from(members), min_size=1).map(StageSet)
    return st.one_of(st.just(StageSet(members)), subsets)


def _pick(draw: Any, items: Sequence[T]) -> T:
    """One of ``items``, shrinking towards the first.

    Drawing an index reuses one cached strategy, where ``sampled_from`` on
    a fresh list would build and validate a new one for every draw.
    """
    return items[draw(st.integers(0, len(items) - 1))]


@attrs.define
class _Graph:
    """What the drafts so far provide, and where."""

    kinds: dict[str, str]
    available: dict[str, StageSet]
    external: set[str]
    fan_open: dict[str, bool] = attrs.field(factory=dict)
    consumed: set[str] = attrs.field(factory=set)
    rebound: dict[str, StageSet] = attrs.field(factory=dict)
    nodes: list[NodeDraft] = attrs.field(factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def readable(self, stages: StageSet, kinds: tuple[str, ...] = KINDS) -> list[str]:
        """Names a required single-value port can read in every one of ``stages``."""
        return [
            name
            for name, kind in self.kinds.items()
            if name not in self.fan_open
            and kind in kinds
            and stages <= self.available[name]
        ]

    def singles(self) -> list[str]:
        return [name for name in self.kinds if name not in self.fan_open]

    def add(self, draft: NodeDraft) -> None:
        self.nodes.append(draft)
        for port in draft.inputs:
            if port.form == GAIN:
                continue
            if port.variadic and port.wire in self.fan_open:
                self.fan_open[port.wire] = False
            if port.wire not in draft_output_names(draft):
                self.consumed.add(port.wire)
        for out in draft.outputs:
            if out.name in draft_input_wires(draft):
                self.rebound[out.name] = self.rebound.get(out.name, StageSet()) | (
                    draft.stages
                )
                continue
            self.kinds[out.name] = out.kind
            previous = self.available.get(out.name, StageSet())
            self.available[out.name] = previous | draft.stages


def draft_output_names(draft: NodeDraft) -> set[str]:
    return {out.name for out in draft.outputs}


def draft_input_wires(draft: NodeDraft) -> set[str]:
    return {port.wire for port in draft.inputs}


@st.composite
def _externals(draw: Any) -> dict[str, str]:
    count = draw(st.integers(0, 2))
    kinds = {"x0": "NC"}
    for index in range(1, count + 1):
        kinds[f"x{index}"] = _pick(draw, KINDS)
    return kinds


def _spelling(draw: Any, graph: _Graph, wire: str, form: str) -> dict[str, Any]:
    """Declared spec of a port: full and typed for batch names, loose otherwise."""
    if form == GAIN:
        return {"kind": "S"}
    kind = graph.kinds[wire]
    if wire in graph.external:
        return {"kind": kind, "shape": FULL_SHAPES[kind], "typed": True}
    annotated = form == "list" or draw(st.booleans()) or draw(st.booleans())
    return {
        "kind": kind,
        "shape": _pick(draw, LOOSE_SHAPES[kind]),
        "typed": draw(st.booleans()),
        "annotated": annotated,
    }


def _port(draw: Any, graph: _Graph, wire: str, form: str) -> InputDraft:
    param = wire
    if form in ("required", "optional", "keyword") and draw(st.booleans()):
        param = f"{wire}_in"
    return InputDraft(
        param=param, wire=wire, form=form, **_spelling(draw, graph, wire, form)
    )


def _candidates(graph: _Graph, stages: StageSet, form: str) -> list[str]:
    if form == GAIN:
        return [GAIN]
    if form in ("required", "keyword"):
        return graph.readable(stages)
    if form == "optional":
        return graph.singles()
    return list(graph.kinds)


def _extra_ports(
    draw: Any, graph: _Graph, stages: StageSet, used: set[str]
) -> list[InputDraft]:
    ports: list[InputDraft] = []
    for _ in range(draw(st.integers(0, 3))):
        form = _pick(draw, EXTRA_FORMS)
        if form == "star" and any(p.form == "star" for p in ports):
            continue
        choices = [n for n in _candidates(graph, stages, form) if n not in used]
        if not choices:
            continue
        wire = _pick(draw, choices)
        used.add(wire)
        ports.append(_port(draw, graph, wire, form))
    return ports


def _out(draw: Any, name: str, kind: str) -> OutputDraft:
    shape = _pick(draw, LOOSE_SHAPES[kind])
    return OutputDraft(name=name, kind=kind, shape=shape, typed=draw(st.booleans()))


def _outputs(
    draw: Any, graph: _Graph, name: str, role: str, base_kind: str
) -> tuple[tuple[OutputDraft, ...], bool]:
    """Outputs of a new node and whether they are named with ``outputs=``."""
    kinds = ROLE_OUTPUT_KINDS.get(role, REDUCIBLE[base_kind])
    shape = _pick(draw, ["fresh", "own", "fan", "several"])
    if shape == "own":
        return (_out(draw, name, _pick(draw, kinds)),), False
    if shape == "several" and role == "node":
        first, second = graph.fresh("v"), graph.fresh("v")
        return tuple(_out(draw, n, _pick(draw, kinds)) for n in (first, second)), True
    if shape == "fan" and role == "node":
        return (_fan_output(draw, graph, kinds),), True
    return (_out(draw, graph.fresh("v"), _pick(draw, kinds)),), True


def _fan_output(draw: Any, graph: _Graph, kinds: tuple[str, ...]) -> OutputDraft:
    open_names = [
        name
        for name, is_open in graph.fan_open.items()
        if is_open and graph.kinds[name] in kinds
    ]
    if open_names and draw(st.booleans()):
        name = _pick(draw, open_names)
        return _out(draw, name, graph.kinds[name])
    name = graph.fresh("fan")
    graph.fan_open[name] = True
    return _out(draw, name, _pick(draw, kinds))


def _context(draw: Any) -> str | None:
    return _pick(draw, [None, "context", "ctx"])


@st.composite
def _plain(draw: Any, graph: _Graph) -> NodeDraft:
    name = graph.fresh("n")
    stages = draw(stage_set_strategy())
    role = _pick(draw, ["node", "node", "loss", "metric"])
    base_wire = _pick(draw, graph.readable(stages))
    base = _port(draw, graph, base_wire, _pick(draw, ["required", "keyword"]))
    outputs, explicit = _outputs(draw, graph, name, role, base.kind)
    used = {base_wire} | {out.name for out in outputs}
    extra = _extra_ports(draw, graph, stages, used)
    return NodeDraft(
        name=name,
        stages=stages,
        role=role,
        inputs=(base, *extra),
        outputs=outputs,
        explicit=explicit,
        context=_context(draw),
        factor=_pick(draw, [1.0, 0.5, 2.0]),
    )


@st.composite
def _variant(draw: Any, graph: _Graph, twin: NodeDraft) -> NodeDraft | None:
    """A node producing the same outputs as ``twin`` in disjoint stages."""
    free = ALL - graph.available[twin.outputs[0].name]
    if not free:
        return None
    stages = draw(stage_set_strategy(StageSet(free)))
    needed = {out.kind for out in twin.outputs}
    needed_names = {out.name for out in twin.outputs}
    bases = [k for k in KINDS if needed <= set(REDUCIBLE[k])]
    wire = _pick(draw, graph.readable(stages, tuple(bases)))
    base = _port(draw, graph, wire, "required")
    outputs = tuple(_out(draw, out.name, out.kind) for out in twin.outputs)
    return NodeDraft(
        name=graph.fresh("n"),
        stages=stages,
        role=twin.role,
        inputs=(base, *_extra_ports(draw, graph, stages, {wire, *needed_names})),
        outputs=outputs,
        context=_context(draw),
    )


@st.composite
def _rebinder(draw: Any, graph: _Graph, wire: str) -> NodeDraft | None:
    """A node that reads ``wire`` and publishes a new value under that name."""
    free = graph.available[wire] - graph.rebound.get(wire, StageSet())
    if not free:
        return None
    stages = draw(stage_set_strategy(StageSet(free)))
    base = InputDraft(
        param=wire,
        wire=wire,
        form="required",
        **_spelling(draw, graph, wire, "required"),
    )
    return NodeDraft(
        name=graph.fresh("n"),
        stages=stages,
        inputs=(base, *_extra_ports(draw, graph, stages, {wire})),
        outputs=(_out(draw, wire, base.kind),),
        context=_context(draw),
    )


def _rebindable(graph: _Graph, fresh: NodeDraft) -> list[str]:
    names = [out.name for out in fresh.outputs if out.name not in graph.fan_open]
    names += sorted(graph.external - graph.consumed)
    return [name for name in names if name not in graph.consumed]


@st.composite
def pipeline_drafts(draw: Any, min_nodes: int = 1, max_nodes: int = 8) -> PipelineDraft:
    """Drafts of a valid pipeline with ``min_nodes`` to ``max_nodes`` nodes."""
    target = draw(st.integers(min_nodes, max_nodes))
    externals = draw(_externals())
    graph = _Graph(
        kinds=dict(externals),
        available=dict.fromkeys(externals, ALL),
        external=set(externals),
    )
    while len(graph.nodes) < target:
        plain = draw(_plain(graph))
        graph.add(plain)
        if len(graph.nodes) < target and draw(st.booleans()):
            _add(graph, draw(_variant(graph, plain)))
        names = _rebindable(graph, plain)
        if len(graph.nodes) < target and names and draw(st.booleans()):
            _add(graph, draw(_rebinder(graph, _pick(draw, names))))
    externals[GAIN] = "S"
    return PipelineDraft(nodes=tuple(graph.nodes), externals=externals)


def _add(graph: _Graph, draft: NodeDraft | None) -> None:
    if draft is not None:
        graph.add(draft)
