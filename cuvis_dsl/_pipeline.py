"""The pipeline: nodes wired by name, planned per stage, run lazily."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ._context import Context
from ._errors import DefinitionError, did_you_mean, quoted
from ._node import call_target_of, spec_of
from ._plan import Plan, make_plan
from ._spec import NodeSpec
from ._stages import ExecutionStage, as_stage
from ._state import load_pre_hook
from ._wiring import Wiring

__all__ = ["Pipeline"]

PlanKey = tuple[ExecutionStage, "tuple[str, ...] | None", frozenset]


class Pipeline(torch.nn.Module):
    """Nodes wired by name into a lazy, stage-aware graph.

    Building the pipeline checks the wiring of every stage at once and
    raises one `WiringError` listing every problem. Each run plans the
    nodes that its stage and requested outputs need (once per stage,
    request and set of batch keys) and runs only those.

    A pipeline is a ``torch.nn.Module``: module nodes are its submodules
    under their node names, so ``state_dict()`` keys read
    ``"<node>.<parameter>"``.

    Parameters
    ----------
    nodes
        Nodes made with `node`, `loss`, `metric` or the class forms. Their
        order does not matter.
    checks
        Check every value against its port's spec at run time. Can be
        changed later through the ``checks`` attribute or per call.

    Examples
    --------
    >>> import torch
    >>> @node
    ... def scaled(x: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
    ...     return x * factor
    >>> @node(stages="val")
    ... def total(scaled: torch.Tensor) -> torch.Tensor:
    ...     return scaled.sum()
    >>> pipe = Pipeline([total, scaled])
    >>> pipe.forward(batch={"x": torch.ones(3)}, stage="val")
    {'scaled': tensor([2., 2., 2.]), 'total': tensor(6.)}
    >>> pipe.forward(batch={"x": torch.ones(3)}, stage="train")
    {'scaled': tensor([2., 2., 2.])}
    """

    def __init__(self, nodes: Iterable[Any], *, checks: bool = True) -> None:
        super().__init__()
        items = list(nodes)
        specs = [spec_of(item) for item in items]
        self._wiring = Wiring(specs)
        self._items = {spec.name: item for spec, item in zip(specs, items)}
        self._targets = {
            name: call_target_of(item) for name, item in self._items.items()
        }
        self._register_modules()
        self.register_load_state_dict_pre_hook(load_pre_hook)
        self._wiring.check()
        self._plans: dict[PlanKey, Plan] = {}
        self.checks = checks

    def _register_modules(self) -> None:
        for name, item in self._items.items():
            if not isinstance(item, torch.nn.Module):
                continue
            if hasattr(Pipeline, name) or name in self.__dict__:
                raise DefinitionError(
                    f"node name {name!r} clashes with the Pipeline attribute of "
                    f"that name; rename the node with node(module, name='{name}_node')",
                    node=name,
                )
            self.add_module(name, item)

    @property
    def specs(self) -> Mapping[str, NodeSpec]:
        """The declaration of every node, by node name."""
        return self._wiring.specs

    @property
    def nodes(self) -> Mapping[str, Any]:
        """Every node, by node name."""
        return dict(self._items)

    def __getitem__(self, name: str) -> Any:
        self._require_node(name)
        return self._items[name]

    def _require_node(self, name: str) -> None:
        if name not in self._items:
            raise KeyError(
                f"no node named {name!r}.{did_you_mean(name, self._items)} "
                f"Nodes: {quoted(self._items)}"
            )

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def forward(  # type: ignore[override]
        self,
        batch: Mapping[str, Any] | None = None,
        context: Context | None = None,
        stage: ExecutionStage | str | None = None,
        outputs: str | Sequence[str] | None = None,
        checks: bool | None = None,
    ) -> dict[str, Any]:
        """Run the nodes that ``stage`` and ``outputs`` need; return their outputs.

        Parameters
        ----------
        batch
            Values by name; each feeds the inputs of that name.
        context
            The run's context; its stage is the run's stage.
        stage
            The stage, when no context is given (a default context is made).
        outputs
            Names to compute. Only the nodes they depend on run. By default
            every node of the stage runs and every output is returned.
        checks
            Override the pipeline's ``checks`` setting for this call.

        Returns
        -------
        dict
            Output values by name. A name with several producers (fan-in)
            maps to the list of their values.
        """
        context = _context(context, stage)
        batch = {} if batch is None else batch
        plan = self._cached_plan(batch, context, outputs)
        return plan.program.run(
            batch, context, self.checks if checks is None else checks
        )

    def forward_by_node(
        self,
        batch: Mapping[str, Any] | None = None,
        context: Context | None = None,
        stage: ExecutionStage | str | None = None,
        outputs: str | Sequence[str] | None = None,
        checks: bool | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run like `forward`, but return each executed node's own outputs.

        Useful when several nodes publish the same name (fan-in, undeclared
        class-form outputs) and the caller must know which value came from
        which node, as the trainer does for losses and metrics.

        Examples
        --------
        >>> @node(outputs="part")
        ... def a(x: int) -> int:
        ...     return x + 1
        >>> b = node(a, name="b")
        >>> Pipeline([a, b]).forward_by_node(batch={"x": 1}, stage="val")
        {'a': {'part': 2}, 'b': {'part': 2}}
        """
        by_node: dict[str, dict[str, Any]] = self.run_views(
            batch, context, stage, outputs, checks, view="nodes"
        )
        return by_node

    def run_views(
        self,
        batch: Mapping[str, Any] | None,
        context: Context | None,
        stage: ExecutionStage | str | None,
        outputs: str | Sequence[str] | None,
        checks: bool | None,
        view: str,
    ) -> Any:
        """One run, returned as `forward`'s outputs, by node, or ``"both"``."""
        context = _context(context, stage)
        batch = {} if batch is None else batch
        plan = self._cached_plan(batch, context, outputs)
        return plan.program.run(
            batch, context, self.checks if checks is None else checks, view=view
        )

    def inputs_of(
        self,
        node: str,
        batch: Mapping[str, Any] | None = None,
        context: Context | None = None,
        stage: ExecutionStage | str | None = None,
        checks: bool | None = None,
    ) -> dict[str, Any]:
        """The values ``node`` would receive, computed by its upstream nodes only.

        The node itself does not run. Ports that nothing feeds hold their
        default (or None). Statistical initialisation uses this to stream a
        node's inputs.

        Examples
        --------
        >>> @node
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> @node
        ... def shifted(double: int, offset: int = 1) -> int:
        ...     return double + offset
        >>> Pipeline([double, shifted]).inputs_of("shifted", {"x": 3}, stage="val")
        {'double': 6, 'offset': 1}
        """
        self._require_node(node)
        context = _context(context, stage)
        batch = {} if batch is None else batch
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a mapping, got {type(batch).__name__}")
        key = (context.stage, ("<inputs of>", node), frozenset(batch))
        plan = self._plans.get(key)  # type: ignore[arg-type]
        if plan is None:
            made = make_plan(
                self._wiring, context.stage, None, key[2], self._targets, node
            )
            plan = self._plans.setdefault(key, made)  # type: ignore[arg-type]
        return plan.program.run(
            batch, context, self.checks if checks is None else checks
        )

    def _cached_plan(
        self,
        batch: Mapping[str, Any],
        context: Context,
        outputs: str | Sequence[str] | None,
    ) -> Plan:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"batch must be a mapping of names to values, got "
                f"{type(batch).__name__}; pass batch={{'x': value}}"
            )
        key = (context.stage, _outputs(outputs), frozenset(batch))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans.setdefault(key, self._make_plan(*key))
        return plan

    def _make_plan(
        self, stage: ExecutionStage, outputs: tuple[str, ...] | None, keys: frozenset
    ) -> Plan:
        return make_plan(self._wiring, stage, outputs, keys, self._targets)

    def plan(
        self,
        stage: ExecutionStage | str,
        outputs: str | Sequence[str] | None = None,
        batch: Mapping[str, Any] | Iterable[str] | None = None,
    ) -> Plan:
        """The nodes a run in ``stage`` would execute, in order, and the skipped ones.

        Without ``batch``, every input that no node produces is assumed to
        come from the batch.

        Examples
        --------
        >>> @node
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> @node(stages="train")
        ... def noisy(double: int) -> int:
        ...     return double + 1
        >>> print(Pipeline([double, noisy]).plan("val"))
        plan for stage VAL (1 of 2 nodes run; requested: every output)
          reads from the batch: x
          1. double  (x: int) -> double
          skipped: noisy (runs in TRAIN, not VAL)
        """
        resolved = as_stage(stage)
        keys = self._external_names(resolved) if batch is None else frozenset(batch)
        return self._make_plan(resolved, _outputs(outputs), keys)

    def _external_names(self, stage: ExecutionStage) -> frozenset[str]:
        wired = self._wiring.stages[stage]
        return frozenset(
            feed.external
            for feeds in wired.feeds.values()
            for feed in feeds
            if feed.external is not None and not feed.port.optional
        )

    def explain(
        self,
        node: str,
        stage: ExecutionStage | str,
        outputs: str | Sequence[str] | None = None,
        batch: Mapping[str, Any] | Iterable[str] | None = None,
    ) -> str:
        """Say whether ``node`` runs in ``stage``, why, and where its inputs come from.

        Examples
        --------
        >>> @node(stages="train")
        ... def augment(x: int) -> int:
        ...     return x + 1
        >>> print(Pipeline([augment]).explain("augment", "val"))
        node 'augment' does not run in VAL: its stages are TRAIN.
          Fix: node(augment, stages=...) with VAL among the stages.
        """
        self._require_node(node)
        spec = self.specs[node]
        resolved = as_stage(stage)
        if resolved not in spec.stages:
            return (
                f"node {node!r} does not run in {resolved.name}: its stages are "
                f"{spec.stages}.\n  Fix: node({node}, stages=...) with "
                f"{resolved.name} among the stages."
            )
        plan = self.plan(resolved, outputs, batch)
        if node not in plan.nodes:
            return (
                f"node {node!r} does not run in {resolved.name}: {plan.skipped[node]}."
            )
        return self._explain_running(node, plan)

    def _explain_running(self, node: str, plan: Plan) -> str:
        position = plan.nodes.index(node) + 1
        lines = [
            f"node {node!r} runs in {plan.stage.name} (step {position} of "
            f"{len(plan.nodes)}); stages {self.specs[node].stages}."
        ]
        for feed in self._wiring.stages[plan.stage].feeds[node]:
            lines.append(f"  {feed.port.name}: {_feed_text(feed, plan)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        lines = [f"Pipeline({len(self._items)} nodes, checks={self.checks})"]
        for name, spec in sorted(self.specs.items()):
            lines.append(f"  {name}{spec.signature_text()} stages={spec.stages}")
        return "\n".join(lines)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_plans", None)
        state.pop("_targets", None)
        # The specs are kept as built: re-reading them from the nodes could
        # pick up later changes to a module node's declaration.
        state["_wiring"] = list(self._wiring.specs.values())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        specs = state.pop("_wiring")
        self.__dict__.update(state)
        self._wiring = Wiring(specs)
        self._targets = {n: call_target_of(item) for n, item in self._items.items()}
        self._plans = {}


def _feed_text(feed: Any, plan: Plan) -> str:
    if feed.producers:
        return "from " + ", ".join(f"{n!r}" for n, _ in feed.producers)
    if feed.external is not None and feed.external in plan.inputs:
        return f"from the batch key {feed.external!r}"
    if feed.skipped:
        return (
            f"default {feed.port.default!r} (its producer "
            f"{', '.join(feed.skipped)} does not run in {plan.stage.name})"
        )
    return f"default {feed.port.default!r} (not in the batch)"


_DEFAULT_CONTEXTS: dict[object, Context] = {}


def _context(context: Context | None, stage: ExecutionStage | str | None) -> Context:
    if context is None:
        try:
            cached = _DEFAULT_CONTEXTS.get(stage)
        except TypeError:
            cached = None
        if cached is not None:
            return cached
        if stage is None:
            raise ValueError(
                "forward needs the stage of the run: pass stage='train' (or "
                "'val', 'test', 'inference') or context=Context(stage=...)"
            )
        # Contexts are immutable, so one default per stage can be shared.
        return _DEFAULT_CONTEXTS.setdefault(stage, Context(stage=stage))
    if not isinstance(context, Context):
        raise TypeError(f"context must be a Context, got {type(context).__name__}")
    if stage is not None and as_stage(stage) is not context.stage:
        raise ValueError(
            f"stage={as_stage(stage).name} disagrees with the context's stage "
            f"{context.stage.name}; pass only one of them"
        )
    return context


def _outputs(outputs: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if outputs is None:
        return None
    if isinstance(outputs, str):
        return (outputs,)
    return tuple(outputs)
