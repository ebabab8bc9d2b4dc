"""C17: nodes and pipelines pickle, reach spawn workers, or fail fast and clearly."""

import multiprocessing
import pickle

import _c17_nodes as nodes
import pytest
import torch
from torch.utils.data import DataLoader

from cuvis_dsl import Pipeline, node


def declaration(item):
    spec = item.spec
    return (item.name, item.stages, spec.inputs, spec.outputs, spec.context)


def test_module_level_node_round_trips_to_the_same_node():
    copy = pickle.loads(pickle.dumps(nodes.augment))
    assert declaration(copy) == declaration(nodes.augment)
    assert torch.equal(copy(torch.ones(2)), torch.full((2,), 3.0))
    assert torch.equal(nodes.augment(torch.ones(2), gain=3.0), torch.full((2,), 4.0))


def test_renamed_node_round_trips_with_its_declaration():
    copy = pickle.loads(pickle.dumps(nodes.twice))
    assert declaration(copy) == declaration(nodes.twice)
    assert copy.spec.output_names == ("twice",)
    assert copy(torch.zeros(1)).item() == 1.0


def test_compiled_pipeline_round_trips_with_the_same_outputs():
    batch = {"cube": torch.arange(6.0).reshape(2, 3)}
    before = nodes.PIPE.forward(batch=batch, stage="inference")
    copy = pickle.loads(pickle.dumps(nodes.PIPE))
    after = copy.forward(batch=batch, stage="inference")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert str(copy.plan("val")) == str(nodes.PIPE.plan("val"))
    assert copy.specs.keys() == nodes.PIPE.specs.keys()


@pytest.mark.parametrize(
    "item",
    [nodes.make_local_node(), node(lambda cube: cube, name="inline")],
    ids=["nested", "lambda"],
)
def test_local_and_lambda_nodes_fail_to_pickle_naming_the_node(item):
    with pytest.raises(pickle.PicklingError) as info:
        pickle.dumps(item)
    message = str(info.value)
    assert f"node {item.name!r}" in message
    assert "Define it at module level" in message


def loader(transform, workers):
    context = "spawn" if workers else None
    return DataLoader(
        nodes.Cubes(transform),
        batch_size=2,
        num_workers=workers,
        multiprocessing_context=context,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transform",
    [nodes.augment, nodes.ThroughPipeline(nodes.PIPE, "total")],
    ids=["node", "pipeline"],
)
def test_spawn_workers_give_the_batches_of_the_main_process(transform):
    expected = list(loader(transform, workers=0))
    spawned = list(loader(transform, workers=2))
    assert len(spawned) == len(expected) == 3
    assert all(torch.equal(a, b) for a, b in zip(spawned, expected))
    for a, b in zip(spawned, expected):
        ran = nodes.PIPE.forward(batch={"cube": a}, stage="train")["total"]
        assert torch.equal(
            ran, nodes.PIPE.forward(batch={"cube": b}, stage="train")["total"]
        )


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore:Got pickle error when attempting to start")
@pytest.mark.parametrize(
    "item",
    [nodes.make_local_node(), node(lambda cube: cube, name="inline")],
    ids=["nested", "lambda"],
)
def test_local_nodes_sent_to_a_spawn_worker_fail_fast(item):
    with pytest.raises(pickle.PicklingError, match=f"node {item.name!r}"):
        iter(loader(item, workers=2))
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        result = pool.apply_async(nodes.call_node, (item, torch.ones(1)))
        with pytest.raises(pickle.PicklingError, match="Define it at module level"):
            result.get(timeout=20)
    finally:
        pool.terminate()
        pool.join()


def test_deepcopy_of_a_pipeline_with_local_and_lambda_nodes_works():
    import copy

    def build():
        @node
        def halve(x: float) -> float:
            return x / 2

        return Pipeline([halve, node(lambda halve: halve + 1, name="plus_one")])

    twin = copy.deepcopy(build())
    assert twin.forward(batch={"x": 4.0}, stage="val") == {
        "halve": 2.0,
        "plus_one": 3.0,
    }


def test_a_pickled_pipeline_keeps_the_declarations_it_was_built_with():
    head = node(torch.nn.Linear(2, 2), name="head", outputs="y")
    pipe = Pipeline([head])
    node(head, stages="train")
    restored = pickle.loads(pickle.dumps(pipe))
    assert restored.specs["head"].stages == pipe.specs["head"].stages
    assert "y" in restored.forward(batch={"input": torch.ones(1, 2)}, stage="val")
