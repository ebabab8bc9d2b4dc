"""C08: a variadic fan-in port works in every introspection path and at run time."""

from typing import Annotated

import pytest
import torch
from torch import Tensor

from cuvis_dsl import MissingInputError, Pipeline, PortSpec, PortValidationError, node

Artifacts = Annotated[list[Tensor], PortSpec(variadic=True, dtype=torch.float32)]


def producer(name: str, value: float, dtype=torch.float32):
    def body() -> Tensor:
        return torch.tensor(value, dtype=dtype)

    return node(body, name=name, outputs="artifacts")


@node
def monitor(artifacts: Artifacts) -> Tensor:
    return torch.stack(artifacts)


@node
def monitor_star(*artifacts: Tensor) -> int:
    return len(artifacts)


@node
def monitor_optional(artifacts: Artifacts = ()) -> int:
    return len(artifacts)


def producers():
    return [producer("c", 3.0), producer("a", 1.0), producer("b", 2.0)]


@pytest.fixture
def pipe():
    return Pipeline([*producers(), monitor])


def test_port_listing_shows_one_variadic_port(pipe):
    (port,) = pipe.specs["monitor"].inputs
    assert (port.name, port.variadic, port.annotation) == ("artifacts", True, Tensor)
    assert repr(monitor) == (
        "<node 'monitor' (artifacts: *Tensor[float32]) -> monitor, stages=ALWAYS>"
    )
    assert "monitor(artifacts: *Tensor[float32]) -> monitor" in repr(pipe)


def test_explain_shows_three_incoming_edges(pipe):
    assert pipe.explain("monitor", "val").splitlines()[1] == (
        "  artifacts: from 'a', 'b', 'c'"
    )


def test_plan_text_lists_the_producers_before_the_monitor(pipe):
    plan = pipe.plan("val")
    assert plan.nodes == ("a", "b", "c", "monitor")
    assert "4. monitor  (artifacts: *Tensor[float32]) -> monitor" in str(plan)


def test_state_dict_and_module_api_work(pipe):
    assert dict(pipe.state_dict()) == {}
    assert list(pipe.parameters()) == []
    assert pipe.train() is pipe


def test_monitor_receives_the_list_in_node_name_order_on_every_build():
    for _ in range(3):
        out = Pipeline([*producers(), monitor]).forward(stage="val")
        assert out["monitor"].tolist() == [1.0, 2.0, 3.0]
        assert [t.item() for t in out["artifacts"]] == [1.0, 2.0, 3.0]


def test_star_args_spelling_receives_the_same_list():
    seen = []

    @node
    def star(*artifacts: Tensor) -> None:
        seen.append([t.item() for t in artifacts])

    Pipeline([star, *producers()]).forward(stage="test")
    assert seen == [[1.0, 2.0, 3.0]]


def test_zero_producers_give_an_empty_list_for_an_optional_port():
    assert Pipeline([monitor_optional]).forward(stage="val") == {"monitor_optional": 0}
    assert Pipeline([monitor_star]).forward(stage="val") == {"monitor_star": 0}


def test_zero_producers_of_a_required_variadic_port_is_a_clear_error():
    with pytest.raises(
        MissingInputError, match=r"input 'artifacts' of node 'monitor' \(.*\) has no"
    ) as info:
        Pipeline([monitor]).forward(stage="val")
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == ("monitor", "artifacts")


def test_dtype_mismatch_names_the_producer_of_the_bad_element():
    items = [producer("a", 1.0), producer("b", 2.0, dtype=torch.int64), monitor]
    with pytest.raises(PortValidationError, match="from: node 'b'") as info:
        Pipeline(items).forward(stage="val")
    error = info.value
    assert (error.node, error.port, error.producer) == ("monitor", "artifacts", "b")
    assert "Tensor[int64, (), cpu]" in str(error)


def test_declared_dtype_mismatch_of_one_producer_fails_at_build():
    @node(outputs="artifacts")
    def wrong() -> Annotated[Tensor, PortSpec(dtype=torch.int64)]:
        return torch.tensor(1)

    with pytest.raises(ValueError, match="dtype int64 cannot feed float32") as info:
        Pipeline([producer("a", 1.0), wrong, monitor])
    assert [(p.node, p.port) for p in info.value.problems] == [("monitor", "artifacts")]
    assert "output 'artifacts' of 'wrong'" in str(info.value)


def test_testing_strategies_handle_variadic_ports():
    testing = pytest.importorskip("cuvis_dsl.testing")
    from hypothesis import given, settings

    fed_by_nodes = Pipeline([*producers(), monitor])
    fed_by_batch = Pipeline([monitor])

    @settings(max_examples=10, deadline=None, database=None)
    @given(
        testing.batches(fed_by_nodes, stage="val"),
        testing.batches(fed_by_batch, stage="val"),
    )
    def check(empty, batch):
        assert empty == {}
        assert fed_by_nodes.forward(batch=empty, stage="val")["monitor"].shape == (3,)
        stacked = fed_by_batch.forward(batch=batch, stage="val")["monitor"]
        assert torch.equal(stacked[0], batch["artifacts"])

    check()
