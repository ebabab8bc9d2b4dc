"""Stage-filtering invariants, checked on generated pipelines.

Every test draws a pipeline of synthetic nodes (`cuvis_dsl.testing`), a
stage, a batch and a request through Hypothesis, and states one invariant
of the stage contract. Which nodes ran is observed with `record_calls`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_dsl import (
    CycleError,
    DuplicateOutputError,
    ExecutionStage,
    MissingInputError,
    Pipeline,
    StageSet,
)
from cuvis_dsl.testing import batches, record_calls, requested_outputs, stages
from cuvis_dsl.testing._drafts import pipeline_drafts
from cuvis_dsl.testing._reference import expected_run
from cuvis_dsl.testing._synthetic import (
    InputDraft,
    NodeDraft,
    OutputDraft,
    PipelineDraft,
    build_node,
)

TRAIN, VAL = ExecutionStage.TRAIN, ExecutionStage.VAL
ALL = StageSet(ExecutionStage.ALWAYS)
PROPERTY = settings(max_examples=50, deadline=None)
drafts = pipeline_drafts(min_nodes=1, max_nodes=12)


def run(pipe: Pipeline, batch, stage, outputs=None):
    with record_calls() as calls:
        result = pipe.forward(batch=batch, stage=stage, outputs=outputs)
    return calls, result


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    return []


def assert_same_outputs(first: Mapping, second: Mapping) -> None:
    assert first.keys() == second.keys()
    for name in first:
        a, b = tensors_in(first[name]), tensors_in(second[name])
        assert len(a) == len(b)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), name


@st.composite
def stage_runs(draw):
    draft = draw(drafts)
    pipe = draft.build()
    stage = draw(stages())
    batch = draw(batches(pipe, stage=stage))
    request = draw(requested_outputs(pipe, stage))
    return draft, pipe, stage, batch, request


@PROPERTY
@given(stage_runs())
def test_a_full_run_executes_exactly_the_nodes_whose_stages_include_the_stage(case):
    draft, pipe, stage, batch, _ = case
    calls, _ = run(pipe, batch, stage)
    called = [call.node for call in calls]
    assert len(called) == len(set(called))
    assert set(called) == {d.name for d in draft.nodes if stage in d.stages}


@PROPERTY
@given(stage_runs())
def test_a_request_executes_exactly_the_needed_nodes_allowed_in_the_stage(case):
    _, pipe, stage, batch, request = case
    calls, result = run(pipe, batch, stage, request)
    expected = expected_run(pipe.specs, stage, request)
    assert {call.node for call in calls} == expected.needed
    assert all(stage in pipe.specs[call.node].stages for call in calls)
    if request is not None:
        assert set(result) == set(request)


@PROPERTY
@given(draft=drafts, stage=stages(), data=st.data())
def test_no_node_reads_a_value_from_a_node_that_did_not_run_in_the_call(
    draft, stage, data
):
    pipe = draft.build()
    batch = data.draw(batches(pipe))
    run(pipe, batch, TRAIN)
    calls, _ = run(pipe, batch, stage, data.draw(requested_outputs(pipe, stage)))
    available = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    for call in calls:
        for name, value in call.inputs.items():
            for tensor in tensors_in(value):
                assert any(tensor is known for known in available), (call.node, name)
        available.extend(tensors_in(call.result))


def readers_of(pipe: Pipeline, wire: str) -> Iterable[str]:
    return [n for n, spec in pipe.specs.items() if wire in spec.output_names]


@PROPERTY
@given(stage_runs())
def test_every_node_runs_after_each_executed_node_that_produces_what_it_reads(case):
    _, pipe, stage, batch, request = case
    calls, _ = run(pipe, batch, stage, request)
    order = [call.node for call in calls]
    for position, name in enumerate(order):
        for port in pipe.specs[name].inputs:
            for maker in readers_of(pipe, port.wire):
                if maker != name and maker in order:
                    assert order.index(maker) < position, (maker, name)


@PROPERTY
@given(stage_runs())
def test_the_same_batch_gives_the_same_outputs(case):
    _, pipe, stage, batch, request = case
    _, first = run(pipe, batch, stage, request)
    _, second = run(pipe, batch, stage, request)
    assert_same_outputs(first, second)


@PROPERTY
@given(draft=drafts, stage=stages(), data=st.data())
def test_asking_for_more_outputs_never_runs_fewer_nodes(draft, stage, data):
    pipe = draft.build()
    batch = data.draw(batches(pipe, stage=stage))
    some = data.draw(requested_outputs(pipe, stage))
    more = data.draw(requested_outputs(pipe, stage))
    wider = None if some is None or more is None else tuple({*some, *more})
    few, _ = run(pipe, batch, stage, some)
    many, _ = run(pipe, batch, stage, wider)
    assert {c.node for c in few} <= {c.node for c in many}


@PROPERTY
@given(draft=drafts, data=st.data())
def test_wiring_does_not_depend_on_the_order_of_the_node_list(draft, data):
    order = data.draw(st.permutations(range(len(draft.nodes))))
    pipe, shuffled = draft.build(), draft.build(order)
    batch = data.draw(batches(pipe))
    for stage in (TRAIN, VAL, ExecutionStage.TEST, ExecutionStage.INFERENCE):
        plan, other = pipe.plan(stage, batch=batch), shuffled.plan(stage, batch=batch)
        assert plan.nodes == other.nodes
        assert plan.skipped == other.skipped
        assert_same_outputs(
            pipe.forward(batch=batch, stage=stage),
            shuffled.forward(batch=batch, stage=stage),
        )


def fresh_port(wire: str, kind: str, form: str = "optional") -> InputDraft:
    return InputDraft(param=f"{wire}_back", wire=wire, kind=kind, form=form)


def dependency_graph(specs, stage) -> dict[str, frozenset[str]]:
    return dict(expected_run(specs, stage, None).sources)


def descendants(graph: Mapping[str, frozenset[str]], root: str) -> set[str]:
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node, sources in graph.items():
            if node not in found and (root in sources or sources & found):
                found.add(node)
                changed = True
    return found


def nodes_on_cycles(specs) -> set[str]:
    """Nodes that reach themselves through their sources, in some stage."""
    found = set()
    for stage in ExecutionStage:
        if stage.is_concrete:
            graph = dependency_graph(specs, stage)
            found |= {node for node in graph if node in descendants(graph, node)}
    return found


@st.composite
def back_edges(draw):
    """A pipeline draft and the node ``v`` given an input from a node after it.

    The new input reads an output of a node that depends on ``v`` (or of a
    new node reading ``v``), so every cycle runs through ``v``.
    """
    draft = draw(drafts)
    specs = draft.build().specs
    index = draw(st.integers(0, len(draft.nodes) - 1))
    victim = draft.nodes[index]
    own = {out.name for out in victim.outputs}
    later = [
        (d.name, out)
        for d in draft.nodes
        if any(
            d.name in descendants(dependency_graph(specs, s), victim.name)
            for s in victim.stages
        )
        for out in d.outputs
        if out.name not in own and not out.name.startswith("fan")
    ]
    if later and draw(st.booleans()):
        _, out = draw(st.sampled_from(later))
    else:
        out = OutputDraft(name="looped", kind=victim.outputs[0].kind)
        looper = NodeDraft(
            name="looper",
            stages=victim.stages,
            inputs=(
                InputDraft("x", victim.outputs[0].name, victim.outputs[0].kind, "list"),
            ),
            outputs=(out,),
        )
        draft = draft.add(looper)
    edge = fresh_port(out.name, out.kind)
    return draft.replace_node(index, victim.replace(inputs=(*victim.inputs, edge)))


CHAIN = re.compile(r"cycle in [^:]*: ((?:\w+ -> )+\w+)\.")


@settings(max_examples=60, deadline=None)
@given(back_edges())
def test_a_back_edge_is_reported_as_a_cycle_naming_only_nodes_on_it(draft):
    specs = {d.name: build_node(d).spec for d in draft.nodes}
    on_cycle = nodes_on_cycles(specs)
    with pytest.raises(CycleError) as caught:
        draft.build()
    assert on_cycle
    for problem in caught.value.problems:
        chain = CHAIN.search(problem.summary)
        assert chain is not None, problem.summary
        assert set(chain.group(1).split(" -> ")) <= on_cycle
        assert set(problem.involved) == set(chain.group(1).split(" -> "))
    assert set(caught.value.nodes) <= on_cycle


@st.composite
def duplicated(draw):
    draft = draw(drafts)
    producers = [
        (d, out, stage)
        for d in draft.nodes
        for out in d.outputs
        if out.name not in {p.wire for p in d.inputs}
        for stage in d.stages
    ]
    twin, out, stage = draw(st.sampled_from(producers))
    dup = NodeDraft(
        name="duplicate",
        stages=StageSet(stage),
        inputs=(InputDraft("x0", "x0", "NC", "required", ("N", "C"), True),),
        outputs=(OutputDraft(name=out.name, kind=out.kind),),
    )
    probe = NodeDraft(
        name="probe",
        stages=StageSet(stage),
        inputs=(InputDraft(out.name, out.name, out.kind, "required"),),
        outputs=(OutputDraft(name="probed", kind=out.kind),),
    )
    return draft.add(dup, probe), twin.name, out.name


@PROPERTY
@given(duplicated())
def test_a_second_producer_in_an_overlapping_stage_is_reported(case):
    draft, original, name = case
    with pytest.raises(DuplicateOutputError) as caught:
        draft.build()
    message = str(caught.value)
    assert f"output {name!r} has" in message
    assert f"._synthetic.{original} " in message
    assert "._synthetic.duplicate " in message
    assert all(problem.kind == "duplicate" for problem in caught.value.problems)


@PROPERTY
@given(draft=drafts, data=st.data())
def test_a_required_input_missing_from_the_batch_is_reported_before_any_node_runs(
    draft, data
):
    stage_set = data.draw(st.sets(stages(), min_size=1).map(StageSet))
    needs = NodeDraft(
        name="needs",
        stages=stage_set,
        inputs=(InputDraft("absent", "absent", "NC", "required", ("N", "C"), True),),
        outputs=(OutputDraft(name="needed", kind="NC"),),
    )
    original = draft.build()
    pipe = draft.add(needs).build()
    for stage in stage_set:
        batch = data.draw(batches(original, stage=stage))
        with record_calls() as calls, pytest.raises(MissingInputError) as caught:
            pipe.forward(batch=batch, stage=stage)
        assert calls == []
        (problem,) = caught.value.problems
        assert (problem.node, problem.port) == ("needs", "absent")
        assert problem.stages == StageSet(stage)
        assert f"stage {stage.name}" in str(caught.value)


@PROPERTY
@given(drafts)
def test_a_train_only_producer_feeding_a_required_input_of_an_always_node_is_reported(
    draft: PipelineDraft,
):
    producer = NodeDraft(
        name="train_only",
        stages=StageSet(TRAIN),
        inputs=(InputDraft("x0", "x0", "NC", "required", ("N", "C"), True),),
        outputs=(OutputDraft(name="fitted", kind="N"),),
    )
    consumer = NodeDraft(
        name="always",
        stages=ALL,
        inputs=(InputDraft("fitted", "fitted", "N", "required"),),
        outputs=(OutputDraft(name="used", kind="N"),),
    )
    with pytest.raises(MissingInputError) as caught:
        draft.add(producer, consumer).build()
    (problem,) = caught.value.problems
    assert (problem.node, problem.port) == ("always", "fitted")
    assert problem.stages == StageSet("val|test|inference")
    assert "'train_only'" in str(caught.value)
