"""C11: concurrent and reentrant runs of one pipeline keep their values apart."""

import threading
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Context, Pipeline, Trainer, node

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
def test_threads_get_their_own_results_and_contexts():
    pipe = build()
    hammer(pipe, 0)
    cached = dict(pipe._plans)
    text = str(pipe.plan("inference", batch={"x": None}))
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
    assert len(cached) == 1
    assert pipe._plans.keys() == cached.keys()
    assert all(pipe._plans[key] is plan for key, plan in cached.items())
    assert str(pipe.plan("inference", batch={"x": None})) == text


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


@node(outputs="scores")
class Head(nn.Module):
    """A real module node: its parameters require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        MODES.append(self.training)
        return self.linear(x).squeeze(-1)


MODES: list[bool] = []


@pytest.mark.timeout(120)
def test_trainer_predict_from_worker_threads_does_not_track_gradients():
    head = Head()
    pipe = Pipeline([head])
    pipe.train()
    trainer = Trainer(pipe, progress=False)
    inputs = [torch.full((3, 4), float(index)) for index in range(THREADS)]
    with torch.no_grad():
        expected = [head.linear(x).squeeze(-1) for x in inputs]
    assert all(p.requires_grad for p in pipe.parameters())
    MODES.clear()
    start = threading.Barrier(THREADS)

    def work(index):
        start.wait()
        batches = [{"x": inputs[index]}] * 5
        return [out["scores"] for out in trainer.predict(batches)]

    with ThreadPoolExecutor(THREADS) as pool:
        per_thread = list(pool.map(work, range(THREADS)))

    for index, results in enumerate(per_thread):
        assert len(results) == 5
        assert all(result.requires_grad is False for result in results)
        assert all(torch.equal(result, expected[index]) for result in results)
    assert len(MODES) == 5 * THREADS and not any(MODES)
    assert head.training and head.linear.training
    assert torch.is_grad_enabled()
