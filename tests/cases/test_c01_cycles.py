"""C01: a parameter named after its own output, and real cycles, fail early."""

from collections import Counter

import pytest
import torch
from torch import Tensor

from cuvis_dsl import CycleError, MissingInputError, Pipeline, node


@pytest.fixture
def calls():
    return Counter()


def counted(calls, name, reads, output=None, stages="always"):
    """A node ``name`` that sums its inputs and counts its calls."""

    def body(*values):
        calls[name] += 1
        return sum(values)

    return node(
        body,
        name=name,
        inputs={"values": reads},
        outputs=output or name,
        stages=stages,
    )


def smooth_node(calls):
    @node
    def smooth(smooth: Tensor) -> Tensor:
        calls["smooth"] += 1
        return smooth + 1

    return smooth


def test_self_named_parameter_rebinds_the_batch_value(calls):
    @node
    def use(smooth: Tensor) -> Tensor:
        return smooth * 10

    pipe = Pipeline([smooth_node(calls), use])
    out = pipe.forward(batch={"smooth": torch.ones(2)}, stage="train")
    assert torch.equal(out["smooth"], torch.full((2,), 2.0))
    assert torch.equal(out["use"], torch.full((2,), 20.0))


def test_self_named_parameter_without_upstream_names_node_and_port(calls):
    pipe = Pipeline([smooth_node(calls)])
    with pytest.raises(MissingInputError) as info:
        pipe.forward(batch={}, stage="train")
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == ("smooth", "smooth")
    message = str(info.value)
    assert "node 'smooth'" in message
    assert "nothing upstream provides 'smooth'" in message
    assert "Did you mean 'smooth'" not in message
    assert not calls


def test_self_named_parameter_is_checked_by_plan_for_given_batch_keys(calls):
    with pytest.raises(MissingInputError, match="nothing upstream provides"):
        Pipeline([smooth_node(calls)]).plan("val", batch=["other"])


def test_two_node_loop_is_a_cycle_error_before_anything_runs(calls):
    a = counted(calls, "a", reads="b")
    b = counted(calls, "b", reads="a")
    with pytest.raises(CycleError) as info:
        Pipeline([a, b])
    assert isinstance(info.value, ValueError)
    assert "cycle in every stage: a -> b -> a." in str(info.value)
    (problem,) = info.value.problems
    assert (problem.kind, problem.node, problem.port) == ("cycle", "a", None)
    assert not calls


def test_three_node_loop_in_a_larger_graph_names_only_its_nodes(calls):
    acyclic = [
        counted(calls, "load", reads="raw"),
        counted(calls, "left", reads="load"),
        counted(calls, "right", reads="load"),
        counted(calls, "join", reads="left"),
        counted(calls, "report", reads="loop_b"),
    ]
    loop = [
        counted(calls, "loop_a", reads="loop_c"),
        counted(calls, "loop_b", reads="loop_a"),
        counted(calls, "loop_c", reads="loop_b"),
    ]
    with pytest.raises(CycleError) as info:
        Pipeline(acyclic[:2] + loop + acyclic[2:])
    message = str(info.value)
    assert "loop_a -> loop_b -> loop_c -> loop_a" in message
    for name in ("load", "left", "right", "join", "report"):
        assert repr(name) not in message
    assert info.value.nodes == ("loop_a", "loop_b", "loop_c")
    assert not calls


def test_cycle_through_a_renamed_wire_is_found(calls):
    a = counted(calls, "a", reads="y", output="x")
    b = counted(calls, "b", reads="x", output="y")
    with pytest.raises(CycleError, match="a -> b -> a"):
        Pipeline([b, a])


def test_back_edge_on_a_long_chain_is_a_cycle_error_not_recursion(calls):
    length = 1500
    chain = [counted(calls, "n0", reads="raw")]
    chain += [counted(calls, f"n{i}", reads=f"n{i - 1}") for i in range(1, length)]
    assert Pipeline(chain).forward(batch={"raw": 0}, stage="val")[f"n{length - 1}"] == 0
    calls.clear()
    chain[0] = counted(calls, "n0", reads=f"n{length - 1}")
    with pytest.raises(CycleError) as info:
        Pipeline(chain)
    assert "n0 -> n1 -> n2" in str(info.value)
    assert not calls
