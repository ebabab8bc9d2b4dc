"""C16: strategies draw all randomness through Hypothesis and make valid pipelines."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase
from hypothesis.errors import Flaky

from cuvis_dsl import ExecutionStage, PortSpec
from cuvis_dsl.testing import batches, contexts, pipelines, tensors
from cuvis_dsl.testing._reference import expected_run

FAILING = dict(deadline=None, phases=[p for p in Phase if p is not Phase.explain])
SHAPES = {"small": (-1, "C"), "large": (16, "C")}


def failing_test(shape, database, seen):
    """A test whose assertion depends on the data and reseeds torch every time."""
    seeds = itertools.count(1)

    @settings(max_examples=200, database=database, **FAILING)
    @given(tensors(PortSpec(dtype=torch.float32, shape=shape)))
    def check(x):
        seen.append(x.clone())
        torch.manual_seed(next(seeds))
        assert x.max() < 0.3

    return check


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_data_dependent_failure_gives_a_small_falsifying_example(shape):
    seen: list[torch.Tensor] = []
    with pytest.raises(AssertionError) as caught:
        failing_test(shape, None, seen)()
    assert not isinstance(caught.value, Flaky)
    assert type(caught.value) is AssertionError
    shrunk = seen[-1]
    assert shrunk.max() >= 0.3
    if shape == SHAPES["small"]:
        assert shrunk.shape == (1, 1)
        assert shrunk.item() <= 1.0
    else:
        assert shrunk.shape == (16, 1)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_falsifying_example_replays_identically_under_another_torch_seed(shape):
    database = InMemoryExampleDatabase()
    first: list[torch.Tensor] = []
    torch.manual_seed(0)
    with pytest.raises(AssertionError):
        failing_test(shape, database, first)()
    again: list[torch.Tensor] = []
    torch.manual_seed(12345)
    with pytest.raises(AssertionError):
        failing_test(shape, database, again)()
    assert torch.equal(again[0], first[-1])


def test_a_failure_on_a_drawn_batch_is_reported_not_flaky():
    seeds = itertools.count(1)

    @settings(max_examples=100, database=None, **FAILING)
    @given(pipe=pipelines(max_nodes=4), data=st.data())
    def check(pipe, data):
        batch = data.draw(batches(pipe))
        torch.manual_seed(next(seeds))
        for value in batch.values():
            assert not isinstance(value, torch.Tensor) or value.max() < 0.3

    with pytest.raises(AssertionError) as caught:
        check()
    assert type(caught.value) is AssertionError


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_drawing_never_touches_torchs_global_random_state(data):
    before = torch.get_rng_state()
    pipe = data.draw(pipelines(max_nodes=20))
    data.draw(batches(pipe))
    data.draw(tensors(PortSpec(shape=(12, 12))))
    data.draw(contexts())
    assert torch.equal(torch.get_rng_state(), before)


def has_cycle(graph):
    remaining = {node: set(sources) for node, sources in graph.items()}
    while remaining:
        ready = [node for node, sources in remaining.items() if not sources]
        if not ready:
            return True
        for node in ready:
            del remaining[node]
        for sources in remaining.values():
            sources.difference_update(ready)
    return False


@settings(deadline=None)
@given(pipe=pipelines(min_nodes=1, max_nodes=20), data=st.data())
def test_generated_pipelines_of_1_to_20_nodes_are_always_valid(pipe, data):
    specs = pipe.specs
    assert 1 <= len(pipe) <= 20
    assert len(specs) == len(pipe)
    produced = {
        out
        for spec in specs.values()
        for out in spec.output_names
        if out not in {port.wire for port in spec.inputs}
    }
    for spec in specs.values():
        assert 1 <= len(spec.stages) <= 4
    for stage in ExecutionStage:
        if not stage.is_concrete:
            continue
        expected = expected_run(specs, stage, None)
        assert not has_cycle(expected.sources)
        batch = data.draw(batches(pipe, stage=stage))
        for name in expected.active:
            for port in specs[name].inputs:
                if port.optional:
                    continue
                wired = any(
                    port.wire in specs[source].output_names
                    for source in expected.sources[name]
                )
                assert wired or (port.wire not in produced and port.wire in batch)
