"""C09: a dtype or shape mismatch names the port, both ends and the declared spec."""

from typing import Annotated

import pytest
import torch
from torch import Tensor

from cuvis_dsl import ExecutionStage, Pipeline, PortSpec, PortValidationError, node

F32 = torch.float32
ran = []


def loader(cube: Tensor):
    @node(outputs="cube")
    def load() -> Tensor:
        return cube

    return load


@node
def select(
    cube: Annotated[Tensor, PortSpec(dtype=F32, shape=(-1, -1, -1, "C"))],
    weights: Annotated[Tensor, PortSpec(shape=("C",))],
) -> Tensor:
    ran.append(True)
    return (cube * weights).sum(-1)


@node
def select_optional(
    cube: Annotated[Tensor, PortSpec(dtype=F32, shape=(-1, -1, -1, "C"))],
    weights: Annotated[Tensor | None, PortSpec(shape=("C",))] = None,
) -> Tensor:
    return cube.sum(-1) if weights is None else (cube * weights).sum(-1)


def rejected(cube: Tensor, weights: Tensor) -> PortValidationError:
    ran.clear()
    pipe = Pipeline([loader(cube), select])
    with pytest.raises(PortValidationError) as info:
        pipe.forward(batch={"weights": weights}, stage="val")
    assert ran == [], "the body of select ran"
    return info.value


def test_symbolic_conflict_names_both_bindings():
    error = rejected(torch.ones(2, 8, 8, 4), torch.ones(3))
    assert (error.node, error.port, error.producer) == (
        "select",
        "weights",
        "external input",
    )
    assert error.stage is ExecutionStage.VAL
    message = str(error)
    assert "input 'weights' of node 'select'" in message
    assert "C=4 from 'cube'" in message
    assert "C=3 from 'weights'" in message
    assert "from: external input" in message
    assert "expected: Tensor[(C,)]" in message
    assert "Tensor[float32, (3,), cpu]" in message


def test_wrong_dtype_names_producer_spec_and_actual_value():
    error = rejected(torch.ones(2, 8, 8, 4, dtype=torch.float64), torch.ones(4))
    assert (error.node, error.port, error.producer) == ("select", "cube", "load")
    message = str(error)
    assert "input 'cube' of node 'select'" in message
    assert "from: node 'load'" in message
    assert "expected: Tensor[float32, (-1, -1, -1, C)]" in message
    assert "Tensor[float64, (2, 8, 8, 4), cpu]" in message
    assert "dtype mismatch" in message


def test_wrong_rank_names_producer_spec_and_actual_shape():
    error = rejected(torch.ones(2, 8, 8), torch.ones(4))
    assert (error.port, error.producer) == ("cube", "load")
    message = str(error)
    assert "rank mismatch: expected 4 dims" in message
    assert "Tensor[float32, (2, 8, 8), cpu]" in message
    assert "(-1, -1, -1, C)" in message
    assert message.splitlines()[-1].strip().startswith("Fix:")


@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (5, 3, 2, 4), (0, 7, 1, 4)])
def test_wildcard_dims_accept_any_size(shape):
    pipe = Pipeline([loader(torch.ones(shape)), select])
    out = pipe.forward(batch={"weights": torch.ones(4)}, stage="val")
    assert out["select"].shape == shape[:3]


def test_optional_port_receiving_none_skips_the_check():
    pipe = Pipeline([loader(torch.ones(1, 2, 2, 4)), select_optional])
    out = pipe.forward(batch={"weights": None}, stage="val")
    assert torch.equal(out["select_optional"], torch.full((1, 2, 2), 4.0))
    assert "select_optional" in pipe.forward(stage="val")


def test_optional_port_receiving_a_tensor_is_still_checked():
    pipe = Pipeline([loader(torch.ones(1, 2, 2, 4)), select_optional])
    with pytest.raises(PortValidationError, match="C=3 from 'weights'"):
        pipe.forward(batch={"weights": torch.ones(3)}, stage="val")


def test_checks_off_lets_the_body_fail_with_a_note_naming_the_node():
    pipe = Pipeline([loader(torch.ones(2, 8, 8, 4)), select], checks=False)
    with pytest.raises(RuntimeError) as info:
        pipe.forward(batch={"weights": torch.ones(3)}, stage="val")
    note = info.value.__notes__[0]
    assert "while running node 'select'" in note
    assert "weights=Tensor[float32, (3,), cpu]" in note
