"""C11: concurrent and reentrant runs of one pipeline keep their values apart."""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest
import torch
from torch import Tensor

from cuvis_dsl import Context, Pipeline, node

THREADS, CALLS = 16, 50


@node
def scale(x: Tensor, factor: float = 2.0) -> Tensor:
    return x * factor


@node
def total(scale: Tensor, context: Context) -> tuple:
    return scale.sum(), context


def build():
    return Pipeline([scale, total])


def hammer(pipe, index):
    results = []
    for call in range(CALLS):
        context = Context(stage="inference", batch_idx=call, epoch=index)
        out = pipe.forward(batch={"x": torch.full((4,), float(index))}, context=context)
        results.append((out["total"], context))
    return results


@pytest.mark.timeout(60)
def test_threads_get_their_own_results_and_contexts(caplog):
    pipe = build()
    caplog.set_level(logging.DEBUG, logger="cuvis_dsl")
    hammer(pipe, 0)
    planned = len(caplog.records)
    start = threading.Barrier(THREADS)

    def work(index):
        start.wait()
        return hammer(pipe, index)

    with ThreadPoolExecutor(THREADS) as pool:
        per_thread = list(pool.map(work, range(THREADS)))
    for index, results in enumerate(per_thread):
        assert len(results) == CALLS
        for (value, context), expected in results:
            assert value.item() == 8.0 * index
            assert context is expected
            assert not value.requires_grad
    assert len(caplog.records) == planned, "the cached plan was recomputed"


@pytest.mark.timeout(60)
def test_nothing_of_a_call_is_kept_on_the_pipeline_or_its_nodes():
    pipe = build()
    before = {key: value for key, value in vars(pipe).items() if key != "_plans"}
    node_state = {name: dict(vars(item)) for name, item in pipe.nodes.items()}
    big = torch.full((4,), 123.0)
    pipe.forward(batch={"x": big}, stage="inference")
    after = {key: value for key, value in vars(pipe).items() if key != "_plans"}
    assert after.keys() == before.keys()
    assert all(after[key] is before[key] for key in before)
    assert {name: dict(vars(item)) for name, item in pipe.nodes.items()} == node_state
    for plan in pipe._plans.values():
        for item in (plan, plan.program):
            fields = attrs.asdict(item, recurse=False).values()
            assert all(value is not big for value in fields)


@pytest.mark.timeout(30)
def test_a_node_may_run_the_same_pipeline_again():
    pipes = []

    @node(stages="val")
    def outer(x: Tensor) -> Tensor:
        inner = pipes[0].forward(batch={"x": x + 1}, stage="inference")
        return inner["total"][0]

    pipe = Pipeline([scale, total, outer])
    pipes.append(pipe)
    out = pipe.forward(batch={"x": torch.ones(4)}, stage="val")
    assert out["outer"].item() == 16.0
    assert out["total"][0].item() == 8.0


@pytest.mark.timeout(60)
def test_inference_from_worker_threads_does_not_track_gradients():
    weight = torch.ones(4, requires_grad=True)

    @node
    def weighted(x: Tensor) -> Tensor:
        return x * weight

    pipe = Pipeline([weighted])

    def work(index):
        with torch.inference_mode():
            out = pipe.forward(
                batch={"x": torch.full((4,), float(index))}, stage="inference"
            )
        return out["weighted"]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    assert [r.requires_grad for r in results] == [False] * 8
    assert [r.sum().item() for r in results] == [4.0 * i for i in range(8)]
    assert torch.is_grad_enabled()
