"""`check_pipeline`: Hypothesis against your pipeline, in every stage."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import hypothesis
from hypothesis import Phase, given
from hypothesis import strategies as st
from hypothesis.control import current_build_context

from .._compile import add_note
from .._context import Context
from .._errors import WiringError
from .._pipeline import Pipeline
from .._plan import Plan
from .._ports import summarize
from .._stages import CONCRETE_STAGES, ExecutionStage, as_stage, as_stages
from ._checks import (
    Finding,
    check_executed,
    check_grad,
    check_mutation,
    check_roles,
    check_same_runs,
    check_specs,
)
from ._observe import (
    Observation,
    observed_copy,
    observing,
    preserved_state,
    trainer_conditions,
)
from ._reference import Expected, expected_run
from .strategies import batches as batch_strategy
from .strategies import contexts, requested_outputs

__all__ = ["PipelineCheckError", "check_pipeline"]

BatchStrategies = (
    st.SearchStrategy[Mapping[str, Any]]
    | Mapping[Any, st.SearchStrategy[Mapping[str, Any]]]
)
Draw = Callable[[st.SearchStrategy[Any]], Any]


class PipelineCheckError(AssertionError):
    """A pipeline broke the stage contract on some batch.

    Attributes
    ----------
    check
        Which property broke: ``"wiring"``, ``"plan"``, ``"calls"``, ``"order"``,
        ``"spec"``, ``"grad"``, ``"mutation"``, ``"deterministic"`` or
        ``"roles"``.
    stage
        The stage of the failing run.
    node
        The node at fault, when one is.
    port
        The port concerned, when one is.
    batch
        Summary of the batch (dtype and shape of each value).
    context
        The context of the failing run.
    """

    def __init__(
        self,
        message: str,
        *,
        check: str,
        stage: ExecutionStage,
        node: str | None,
        port: str | None,
        batch: str,
        context: Context | None,
    ) -> None:
        super().__init__(message)
        self.check = check
        self.stage = stage
        self.node = node
        self.port = port
        self.batch = batch
        self.context = context


def _batch_text(batch: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{key}={summarize(value)}" for key, value in batch.items())
    return shown or "(empty)"


def _error(
    finding: Finding,
    stage: ExecutionStage,
    batch: Mapping[str, Any] | None,
    context: Any,
) -> PipelineCheckError:
    text = _batch_text(batch) if batch is not None else "(none drawn)"
    lines = [
        f"check {finding.check!r} failed in stage {stage.name}: {finding.headline}"
    ]
    lines += [f"  {detail}" for detail in finding.details]
    if batch is not None:
        lines.append(f"  batch: {text}")
    if context is not None:
        lines.append(f"  context: {context!r}")
    lines.append(f"  Fix: {finding.fix}")
    return PipelineCheckError(
        "\n".join(lines),
        check=finding.check,
        stage=stage,
        node=finding.node,
        port=finding.port,
        batch=text,
        context=context,
    )


class _Session:
    """One check of one pipeline: the observed copy and the per-stage runs."""

    def __init__(self, pipeline: Pipeline, stages: Sequence[ExecutionStage]) -> None:
        self.pipeline = pipeline
        self.specs = pipeline.specs
        self.stages = stages
        self.observed = observed_copy(pipeline)

    def check_plans(self) -> None:
        """Every stage plans with every input it reads taken from the batch."""
        for stage in self.stages:
            try:
                self.plan(stage, None, None)
            except Finding as finding:
                raise _error(finding, stage, None, None) from None

    def check_example(
        self, draw: Draw, strategies: Mapping[ExecutionStage, Any]
    ) -> None:
        for stage in self.stages:
            batch = draw(strategies[stage])
            context = draw(contexts(stage))
            request = draw(requested_outputs(self.pipeline, stage))
            try:
                self.check_stage(stage, batch, context, request)
            except Finding as finding:
                raise _error(finding, stage, batch, context) from None

    def check_stage(
        self,
        stage: ExecutionStage,
        batch: Mapping[str, Any],
        context: Context,
        request: tuple[str, ...] | None,
    ) -> None:
        planned = self.plan(stage, None, batch).nodes
        calls, result = self.run(batch, context, None)
        check_executed(planned, calls, self.expect(stage, None))
        check_specs(self.specs, calls)
        check_mutation(calls)
        check_roles(self.specs, stage, result)
        if stage is not ExecutionStage.TRAIN:
            check_grad(stage, calls)
            again, _ = self.run(batch, context, None)
            check_same_runs(self.specs, calls, again, stage)
        if request is not None:
            planned = self.plan(stage, request, batch).nodes
            some, _ = self.run(batch, context, request)
            check_executed(planned, some, self.expect(stage, request))

    def expect(self, stage: ExecutionStage, request: Iterable[str] | None) -> Expected:
        return expected_run(self.specs, stage, request)

    def plan(
        self, stage: ExecutionStage, request: tuple[str, ...] | None, batch: Any
    ) -> Plan:
        try:
            return self.pipeline.plan(stage, request, batch)
        except WiringError as exc:
            raise Finding(
                "plan",
                f"the pipeline cannot plan this run: {exc}",
                node=exc.nodes[0] if exc.nodes else None,
                fix="see the wiring report above; the batch must hold every "
                "input the stage needs",
            ) from None

    def run(
        self,
        batch: Mapping[str, Any],
        context: Context,
        request: tuple[str, ...] | None,
    ) -> tuple[list[Observation], dict[str, Any]]:
        watch = context.stage is not ExecutionStage.TRAIN
        with (
            observing(watch_grad=watch) as calls,
            trainer_conditions(self.observed, context.stage),
        ):
            try:
                result = self.observed.forward(
                    batch=batch, context=context, outputs=request, checks=False
                )
            except Exception as exc:
                check_specs(self.specs, calls)
                add_note(
                    exc,
                    f"found by check_pipeline with batch {_batch_text(batch)} "
                    f"and {context!r}",
                )
                raise
        return calls, result


def _strategies(
    pipeline: Pipeline,
    batches: BatchStrategies | None,
    stages: Sequence[ExecutionStage],
) -> dict[ExecutionStage, Any]:
    if isinstance(batches, st.SearchStrategy):
        return dict.fromkeys(stages, batches)
    given_strategies = {as_stage(k): v for k, v in (batches or {}).items()}
    return {
        stage: given_strategies[stage]
        if stage in given_strategies
        else batch_strategy(pipeline, stage)
        for stage in stages
    }


def _settings(
    max_examples: int, settings: hypothesis.settings | None
) -> hypothesis.settings:
    parent = settings if settings is not None else hypothesis.settings()
    return hypothesis.settings(
        parent,
        max_examples=max_examples if settings is None else parent.max_examples,
        deadline=None,
        database=None if settings is None else parent.database,
        report_multiple_bugs=False,
        phases=[phase for phase in parent.phases if phase is not Phase.explain],
    )


def check_pipeline(
    pipeline: Pipeline | Iterable[Any],
    batches: BatchStrategies | None = None,
    *,
    stages: Iterable[ExecutionStage | str] | ExecutionStage | str | None = None,
    max_examples: int = 25,
    settings: hypothesis.settings | None = None,
) -> None:
    """Run Hypothesis against a pipeline and check the stage contract.

    For every stage, on drawn batches, contexts and requested outputs:

    - the run plans without wiring errors;
    - the plan and the nodes actually called are exactly the nodes that
      are allowed in the stage and needed for the request, worked out
      independently from the node specs, in a topological order;
    - every input and output of every call matches its port spec,
      symbolic dims included;
    - no node changes one of its input tensors in place;
    - loss and metric outputs appear exactly in their nodes' stages;
    - outside TRAIN, run as the trainer runs it (eval mode, autograd off),
      no node returns a tensor that requires grad: such a tensor was made
      with ``requires_grad=True``, is a parameter returned as is, or comes
      from a node that turns autograd back on;
    - outside TRAIN, the same batch and context give the same results.

    Runs happen on a copy of the pipeline that observes every node call;
    parameters, buffers, module modes, grad mode and torch's random state
    are restored afterwards. Inside a ``@given`` test the checker draws
    from that test's data, one example per call, so Hypothesis shrinks
    your pipeline and the batch together.

    Parameters
    ----------
    pipeline
        The pipeline to check, or its nodes: then building the pipeline is
        part of the check, and a wiring error fails it.
    batches
        Strategy for batches, or a mapping from stage to strategy; by
        default `batches` draws them from the port specs.
    stages
        Stages to check; by default all four.
    max_examples
        Examples when the checker runs Hypothesis itself.
    settings
        Hypothesis settings to start from instead of the current profile
        (then its ``max_examples`` and database are used).

    Raises
    ------
    PipelineCheckError
        An ``AssertionError`` naming the check, stage, node and port, with
        a summary of the shrunk batch. An exception raised by a node is
        re-raised as it is, with a note giving the batch.

    Examples
    --------
    >>> from cuvis_dsl.testing import check_pipeline
    >>> @node
    ... def centred(cube: torch.Tensor) -> torch.Tensor:
    ...     return cube - cube.mean()
    >>> @node(stages="val|test")
    ... def spread(centred: torch.Tensor) -> torch.Tensor:
    ...     return centred.abs().amax()
    >>> check_pipeline(Pipeline([centred, spread]), max_examples=10)
    """
    run_stages = tuple(as_stages(stages)) if stages is not None else CONCRETE_STAGES
    pipeline = _built(pipeline, run_stages)
    strategies = _strategies(pipeline, batches, run_stages)
    session = _Session(pipeline, run_stages)
    session.check_plans()
    with preserved_state(pipeline):
        if hypothesis.currently_in_test_context():
            session.check_example(current_build_context().data.draw, strategies)
            return
        _run_hypothesis(session, strategies, _settings(max_examples, settings))


def _built(
    nodes: Pipeline | Iterable[Any], stages: Sequence[ExecutionStage]
) -> Pipeline:
    if isinstance(nodes, Pipeline):
        return nodes
    try:
        return Pipeline(list(nodes))
    except WiringError as exc:
        problem = exc.problems[0]
        stage = next((s for s in stages if s in problem.stages), stages[0])
        finding = Finding(
            "wiring",
            f"the nodes cannot be wired into a pipeline: {exc}",
            node=problem.node,
            port=problem.port,
            fix="see the wiring report above",
        )
        raise _error(finding, stage, None, None) from None


def _run_hypothesis(
    session: _Session,
    strategies: Mapping[ExecutionStage, Any],
    settings: hypothesis.settings,
) -> None:
    @settings
    @given(data=st.data())
    def check_pipeline_example(data: Any) -> None:
        session.check_example(lambda strategy: data.draw(strategy), strategies)

    check_pipeline_example()
