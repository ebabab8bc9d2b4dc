"""Wiring by name: which output feeds which input, in every stage.

The rules, for a name ``n`` in a stage S:

- a *producer* of ``n`` is a node with an output ``n`` and no input wired
  to ``n``; a *rebinder* of ``n`` has both (``x = f(x)``);
- ``n`` is *internal* when some node produces it, and *external* (read from
  the batch) otherwise;
- a rebinder reads ``n`` from the producers (or the batch); every other
  consumer reads the rebinder's output when the rebinder runs in S, and the
  producers' (or the batch's) value otherwise;
- several producers running in S may feed only variadic ports; they are
  gathered in the order of their node names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ._errors import Problem, WiringError, did_you_mean, merge_problems, quoted
from ._ports import Port, incompatibility
from ._spec import NodeSpec
from ._stages import CONCRETE_STAGES, ExecutionStage, StageSet

__all__ = ["Feed", "StageWiring", "Wiring", "find_cycle"]

Source = tuple[str, str]


@attrs.frozen
class Feed:
    """Where one input port of one node gets its value in one stage.

    ``producers`` are ``(node, output)`` pairs running in the stage; when
    there are none, ``external`` names the batch key to read, and
    ``skipped`` the internal producers that do not run in this stage.
    """

    port: Port
    producers: tuple[Source, ...] = ()
    external: str | None = None
    skipped: tuple[str, ...] = ()


@attrs.frozen
class StageWiring:
    """The wired graph of the nodes that run in one stage."""

    stage: ExecutionStage
    active: tuple[str, ...]
    feeds: dict[str, tuple[Feed, ...]]
    values: dict[str, tuple[Source, ...]]


class Wiring:
    """The wiring of a list of nodes in every stage, checked once."""

    def __init__(self, specs: Sequence[NodeSpec]) -> None:
        _check_unique_names(specs)
        self.specs = {spec.name: spec for spec in specs}
        self.outputs_of = {spec.name: frozenset(spec.output_names) for spec in specs}
        self.producers: dict[str, list[str]] = defaultdict(list)
        self.rebinders: dict[str, list[str]] = defaultdict(list)
        for spec in sorted(specs, key=lambda s: s.name):
            wires = {port.wire for port in spec.inputs}
            for output in spec.outputs:
                table = self.rebinders if output.name in wires else self.producers
                table[output.name].append(spec.name)
        self.undeclared = {key: spec.name for spec in specs for key in spec.undeclared}
        # Feeds that are the same in several stages are one object, so that
        # they are built and checked once.
        self._feeds: dict[tuple[str, str, tuple[Source, ...]], Feed] = {}
        self.stages = {stage: self._wire(stage) for stage in CONCRETE_STAGES}

    def is_internal(self, name: str) -> bool:
        return bool(self.producers.get(name))

    def names(self) -> set[str]:
        """Every name a node produces or reads."""
        result = set(self.producers) | set(self.rebinders)
        for spec in self.specs.values():
            result.update(port.wire for port in spec.inputs)
        return result

    def _wire(self, stage: ExecutionStage) -> StageWiring:
        # Sorted, so that reports and plans do not follow the node-list order.
        active = tuple(
            sorted(
                n
                for n, s in self.specs.items()
                if frozenset.__contains__(s.stages, stage)
            )
        )
        running = set(active)
        values: dict[str, tuple[Source, ...]] = {}
        base: dict[str, tuple[Source, ...]] = {}
        for name, nodes in self.producers.items():
            base[name] = tuple((n, name) for n in nodes if n in running)
            values[name] = base[name]
        for name, nodes in self.rebinders.items():
            live = [n for n in nodes if n in running]
            if live:
                values[name] = tuple((n, name) for n in live)
        feeds = {
            node: tuple(
                self._feed(port, node, base if self._rebinds(node, port) else values)
                for port in self.specs[node].inputs
            )
            for node in active
        }
        return StageWiring(stage=stage, active=active, feeds=feeds, values=values)

    def _rebinds(self, node: str, port: Port) -> bool:
        return port.wire in self.outputs_of[node]

    def _feed(
        self, port: Port, node: str, table: dict[str, tuple[Source, ...]]
    ) -> Feed:
        producers = table.get(port.wire, ())
        key = (node, port.name, producers)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = self._new_feed(port, producers)
        return feed

    def _new_feed(self, port: Port, producers: tuple[Source, ...]) -> Feed:
        if producers:
            return Feed(port=port, producers=producers)
        if not self.is_internal(port.wire):
            return Feed(port=port, external=port.wire)
        return Feed(port=port, skipped=tuple(self.producers[port.wire]))

    def check(self) -> None:
        """Raise one `WiringError` listing every problem in every stage."""
        problems: list[Problem] = []
        clean: set[int] = set()
        for stage_wiring in self.stages.values():
            problems.extend(self._stage_problems(stage_wiring, clean))
        problems = merge_problems(problems)
        if problems:
            raise WiringError.from_problems(problems, "pipeline cannot be wired")

    def _stage_problems(self, wired: StageWiring, clean: set[int]) -> Iterable[Problem]:
        stage = StageSet(wired.stage)
        cycle = find_cycle(_dependencies(wired))
        if cycle:
            yield self._cycle_problem(cycle, stage)
        for name, nodes in self.rebinders.items():
            live = [n for n in nodes if n in wired.feeds]
            if len(live) > 1:
                yield self._rebinding_problem(name, live, stage)
        for node in wired.active:
            for feed in wired.feeds[node]:
                if id(feed) in clean:
                    continue
                found = list(self._feed_problems(node, feed, stage))
                if not found:
                    clean.add(id(feed))
                yield from found

    def _feed_problems(
        self, node: str, feed: Feed, stage: StageSet
    ) -> Iterable[Problem]:
        port = feed.port
        rebound = self.rebinders.get(port.wire, ())
        if len(feed.producers) > 1 and not port.variadic:
            # Several live rebinders are already reported as one ambiguity.
            if not all(producer in rebound for producer, _ in feed.producers):
                yield self._duplicate_problem(node, port, feed.producers, stage)
        if feed.external is not None and feed.external in self.undeclared:
            yield self._undeclared_problem(node, port, stage)
        elif not feed.producers and feed.external is None:
            if not port.optional:
                yield self._gap_problem(node, port, feed.skipped, stage)
        for producer, output in feed.producers:
            reason = incompatibility(self.output_port(producer, output), port)
            if reason:
                yield self._spec_problem(node, port, producer, reason, stage)

    def output_port(self, node: str, output: str) -> Port:
        for port in self.specs[node].outputs:
            if port.name == output:
                return port
        raise KeyError((node, output))

    def at(self, node: str) -> str:
        spec = self.specs[node]
        return f"{node!r} ({spec.location})"

    def _cycle_problem(self, cycle: list[str], stage: StageSet) -> Problem:
        start = cycle.index(min(cycle))
        ordered = cycle[start:] + cycle[:start]
        feeds = self.stages[next(iter(stage))].feeds
        edges = []
        for a, b in zip(ordered, ordered[1:] + ordered[:1]):
            wires = sorted(
                {f.port.wire for f in feeds[b] if any(p == a for p, _ in f.producers)}
            )
            edges.append(f"{self.at(a)} feeds {'/'.join(map(repr, wires))} to {b!r}")
        return Problem(
            kind="cycle",
            node=ordered[0],
            port=None,
            stages=stage,
            summary=f"cycle in {{stages}}: {' -> '.join(ordered + [ordered[0]])}.",
            details=tuple(edges),
            involved=tuple(ordered),
            fix="rename an input or an output so that one of these wires breaks; "
            "a node reading and writing the same name rebinds it only when "
            "something upstream produces it",
        )

    def _rebinding_problem(
        self, name: str, nodes: list[str], stage: StageSet
    ) -> Problem:
        return Problem(
            kind="rebinding",
            node=nodes[0],
            port=name,
            stages=stage,
            summary=f"{len(nodes)} nodes rebind {name!r} in {{stages}}: "
            f"{', '.join(self.at(n) for n in nodes)}; their order would be a guess.",
            fix=f"chain them explicitly: let one read {name!r} and publish a new "
            f"name, e.g. node(f, outputs='{name}_1'), and feed the next from it",
        )

    def _duplicate_problem(
        self, node: str, port: Port, producers: tuple[Source, ...], stage: StageSet
    ) -> Problem:
        names = [p for p, _ in producers]
        origins = ", ".join(
            f"{p!r} = {self.specs[p].origin} ({self.specs[p].location})" for p in names
        )
        return Problem(
            kind="duplicate",
            node=node,
            port=port.name,
            stages=stage,
            summary=f"output {port.wire!r} has {len(names)} producers in {{stages}}, "
            f"but input {port.name!r} of node {self.at(node)} takes one value.",
            details=(f"Producers: {origins}.",),
            fix=f"give the producers disjoint stages, rename one output "
            f"(node({names[1]}, outputs='{port.wire}_2')), or make "
            f"{port.name!r} variadic to receive all of them",
        )

    def _undeclared_problem(self, node: str, port: Port, stage: StageSet) -> Problem:
        owner = self.undeclared[port.wire]
        return Problem(
            kind="undeclared",
            node=node,
            port=port.name,
            stages=stage,
            summary=f"input {port.name!r} of node {self.at(node)} reads "
            f"{port.wire!r}, which node {self.at(owner)} returns without "
            f"declaring it.",
            fix=f"declare the output on {owner!r}: OUTPUT_SPECS = "
            f"{{{port.wire!r}: PortSpec(...)}}, or outputs=[..., {port.wire!r}]",
        )

    def _gap_problem(
        self, node: str, port: Port, skipped: tuple[str, ...], stage: StageSet
    ) -> Problem:
        producers = ", ".join(
            f"{self.at(p)}, which runs in {self.specs[p].stages}" for p in skipped
        )
        return Problem(
            kind="missing",
            node=node,
            port=port.name,
            stages=stage,
            summary=f"input {port.wire!r} of node {self.at(node)} is produced "
            f"only by {producers}; nothing provides it in {{stages}}.",
            fix=_gap_fix(node, port, skipped[0], self.specs[skipped[0]].stages),
        )

    def _spec_problem(
        self, node: str, port: Port, producer: str, reason: str, stage: StageSet
    ) -> Problem:
        out = self.output_port(producer, port.wire)
        return Problem(
            kind="spec",
            node=node,
            port=port.name,
            stages=stage,
            summary=f"output {port.wire!r} of {self.at(producer)} cannot feed "
            f"input {port.name!r} of {self.at(node)}: {reason}.",
            details=(
                f"Producer declares {out.describe()}; consumer expects "
                f"{port.describe()}.",
            ),
            fix="make the two annotations agree, or convert the value in a node "
            "between them",
        )


def _gap_fix(node: str, port: Port, producer: str, stages: StageSet) -> str:
    allowed = "|".join(stage.value for stage in stages)
    return (
        f"give port {port.name!r} of {node!r} a default ({port.name}: ... | None "
        f"= None), run {producer!r} in {{stages}} too (node({producer}, "
        f"stages=...)), or restrict the consumer (node({node}, "
        f"stages={allowed!r}))"
    )


def _check_unique_names(specs: Sequence[NodeSpec]) -> None:
    seen: dict[str, NodeSpec] = {}
    problems = []
    for spec in specs:
        other = seen.get(spec.name)
        if other is not None:
            problems.append(
                Problem(
                    kind="duplicate",
                    node=spec.name,
                    port=None,
                    stages=other.stages | spec.stages,
                    summary=f"two nodes are named {spec.name!r}: {other.origin} "
                    f"({other.location}) and {spec.origin} ({spec.location}).",
                    fix=f"rename one: node({spec.name}, name='{spec.name}_2')",
                )
            )
        seen[spec.name] = spec
    if problems:
        raise WiringError.from_problems(problems, "pipeline cannot be built")


def _dependencies(wired: StageWiring) -> dict[str, list[str]]:
    return {
        node: sorted({p for feed in feeds for p, _ in feed.producers})
        for node, feeds in wired.feeds.items()
    }


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of a dependency graph, in dependency order, or None.

    Iterative, so deep graphs do not hit the recursion limit.
    """
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack: list[tuple[str, Any]] = [(root, iter(graph.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            current, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[current] = 2
                stack.pop()
                path.pop()
                continue
            mark = state.get(child, 0)
            if mark == 1:
                cycle = path[path.index(child) :]
                return list(reversed(cycle))
            if mark == 0:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(graph.get(child, ()))))
    return None


def missing_input_problem(
    node: str,
    port: Port,
    wiring: Wiring,
    stage: ExecutionStage,
    available: Iterable[str],
) -> Problem:
    """A required external input that the batch does not contain."""
    # Neither the missing name nor the node's own outputs can feed it, so
    # neither is offered (a rebinder's output would otherwise be suggested
    # for its own input).
    names = sorted(set(available) - {port.wire} - wiring.outputs_of[node])
    rebinding = port.wire in wiring.specs[node].output_names
    what = (
        f"node {wiring.at(node)} rebinds {port.wire!r}, but nothing upstream "
        f"provides {port.wire!r}"
        if rebinding
        else f"input {port.wire!r} of node {wiring.at(node)} has no producer"
    )
    return Problem(
        kind="missing",
        node=node,
        port=port.name,
        stages=StageSet(stage),
        summary=f"{what} in {{stages}}.",
        details=(f"Available: {quoted(names)}.{did_you_mean(port.wire, names)}",),
        fix=f"provide {port.wire!r} in the batch, add a node that returns "
        f"{port.wire!r}, or give {port.name!r} a default",
    )
