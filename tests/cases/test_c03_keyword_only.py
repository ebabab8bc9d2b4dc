"""C03: keyword-only parameters are ports, required exactly as the signature says."""

import pytest
import torch
from torch import Tensor

from cuvis_dsl import MissingInputError, Pipeline, Port, node


@node
def scale(cube: Tensor, *, factor: float, offset: float = 0.0) -> Tensor:
    return cube * factor + offset


@node
def factor() -> float:
    return 3


def test_ports_follow_the_signature():
    ports = {port.name: port for port in scale.spec.inputs}
    assert list(ports) == ["cube", "factor", "offset"]
    assert [ports[n].optional for n in ports] == [False, False, True]
    assert [ports[n].kind for n in ports] == ["positional", "keyword", "keyword"]
    assert ports["factor"].default is Port.NO_DEFAULT
    assert ports["offset"].default == 0.0


def test_keyword_only_ports_are_passed_by_keyword():
    out = Pipeline([scale, factor]).forward(batch={"cube": torch.ones(2)}, stage="val")
    assert torch.equal(out["scale"], torch.tensor([3.0, 3.0]))


def test_keyword_only_default_is_overridden_by_the_batch():
    out = Pipeline([scale, factor]).forward(
        batch={"cube": torch.ones(2), "offset": 1.0}, stage="val"
    )
    assert torch.equal(out["scale"], torch.tensor([4.0, 4.0]))


def test_missing_keyword_only_input_names_port_and_node():
    with pytest.raises(MissingInputError) as info:
        Pipeline([scale]).forward(batch={"cube": torch.ones(2)}, stage="val")
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == ("scale", "factor")
    assert "input 'factor' of node 'scale'" in str(info.value)


def test_keyword_only_without_default_after_a_default_is_required():
    @node
    def f(a=1, *, b, c=2):
        return (a, b, c)

    assert [p.optional for p in f.spec.inputs] == [True, False, True]
    assert Pipeline([f]).forward(batch={"b": 5}, stage="val") == {"f": (1, 5, 2)}
