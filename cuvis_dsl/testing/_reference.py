"""What a run should execute, derived from node specs by the documented rules.

This deliberately does not use the pipeline's own wiring or plans: it is
the independent side of a cross-check. The rules, for a name ``n`` in a
stage S: a node with an output ``n`` and no input wired to ``n`` produces
it; one with both rebinds it. A rebinder reads ``n`` from the producers
running in S; any other consumer reads the rebinder when one runs in S,
and the producers otherwise. A run without requested outputs executes
every node whose stages include S; a run with requested outputs executes
the nodes that provide them and, transitively, their sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .._spec import NodeSpec
from .._stages import ExecutionStage

__all__ = ["Expected", "expected_run"]


@attrs.frozen
class Expected:
    """The nodes of one run: which may run, which must, and their sources."""

    active: frozenset[str]
    needed: frozenset[str]
    sources: Mapping[str, frozenset[str]]


def _makers(specs: Mapping[str, NodeSpec], name: str, rebinding: bool) -> list[str]:
    found = []
    for spec in specs.values():
        wires = {port.wire for port in spec.inputs}
        if name in spec.output_names and (name in wires) is rebinding:
            found.append(spec.name)
    return found


def _providers(
    specs: Mapping[str, NodeSpec], active: frozenset[str], name: str
) -> list[str]:
    """Nodes whose value of ``name`` a plain consumer reads in this stage."""
    rebinders = [n for n in _makers(specs, name, True) if n in active]
    if rebinders:
        return rebinders
    return [n for n in _makers(specs, name, False) if n in active]


def _node_sources(
    specs: Mapping[str, NodeSpec], active: frozenset[str], node: str
) -> frozenset[str]:
    spec = specs[node]
    found: set[str] = set()
    for port in spec.inputs:
        if port.wire in spec.output_names:
            found.update(n for n in _makers(specs, port.wire, False) if n in active)
        else:
            found.update(_providers(specs, active, port.wire))
    return frozenset(found)


def _roots(
    specs: Mapping[str, NodeSpec], active: frozenset[str], outputs: Iterable[str]
) -> set[str]:
    roots: set[str] = set()
    for name in outputs:
        providers = _providers(specs, active, name)
        if not providers:
            providers = [n for n in active if name in specs[n].undeclared]
        roots.update(providers)
    return roots


def expected_run(
    specs: Mapping[str, NodeSpec],
    stage: ExecutionStage,
    outputs: Iterable[str] | None,
) -> Expected:
    """The nodes a run in ``stage`` asking for ``outputs`` should execute."""
    active = frozenset(n for n, spec in specs.items() if stage in spec.stages)
    sources = {node: _node_sources(specs, active, node) for node in active}
    if outputs is None:
        return Expected(active=active, needed=active, sources=sources)
    needed: set[str] = set()
    pending = list(_roots(specs, active, outputs))
    while pending:
        current = pending.pop()
        if current not in needed:
            needed.add(current)
            pending.extend(sources[current] - needed)
    return Expected(active=active, needed=frozenset(needed), sources=sources)
