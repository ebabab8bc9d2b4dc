"""C05: port specs read the same with and without postponed annotations."""

import _c05_future as future
import _c05_plain as plain
import _c05_typo as typo
import pytest
import torch

from cuvis_dsl import DefinitionError, Pipeline, PortValidationError

NODES = ["denoise", "boxed", "unboxed", "select", "log_step", "by_name"]


def ports(item):
    spec = item.spec
    return [
        (p.name, p.spec, p.optional, p.default, p.kind, p.annotation.__qualname__)
        for p in spec.inputs + spec.outputs
    ] + [spec.context, spec.returns, spec.stages]


@pytest.mark.parametrize("name", NODES)
def test_specs_are_equal_with_and_without_the_future_import(name):
    assert ports(getattr(future, name)) == ports(getattr(plain, name))


def test_resolved_annotations_are_types_not_strings():
    denoise = future.denoise.spec
    assert denoise.input("cube").annotation is torch.Tensor
    assert denoise.input("k").annotation is int
    assert denoise.input("k").default == 3
    assert future.select.spec.input("cube").spec.shape == (-1, "C")
    assert future.select.spec.input("cube").spec.dtype is torch.float32


def test_forward_reference_to_a_later_class_resolves():
    assert future.boxed.spec.outputs[0].annotation is future.Box
    assert future.unboxed.spec.input("boxed").annotation is future.Box


@pytest.mark.parametrize("module", [future, plain])
def test_running_with_valid_inputs_succeeds(module):
    pipe = Pipeline([module.denoise, module.boxed, module.unboxed, module.select])
    out = pipe.forward(batch={"cube": torch.ones(2, 3)}, stage="val")
    assert torch.equal(out["unboxed"], torch.full((2, 3), 3.0))
    assert torch.equal(out["select"], torch.full((2,), 3.0))


@pytest.mark.parametrize("module", [future, plain])
def test_wrong_input_names_resolved_types(module):
    pipe = Pipeline([module.denoise])
    with pytest.raises(PortValidationError) as info:
        pipe.forward(batch={"cube": torch.ones(1), "k": "3"}, stage="val")
    error = info.value
    assert (error.node, error.port) == ("denoise", "k")
    assert "expected: int" in str(error)
    assert "'int'" not in str(error)


@pytest.mark.parametrize("module", [future, plain])
def test_wrong_tensor_dtype_shows_the_declared_spec(module):
    pipe = Pipeline([module.select])
    with pytest.raises(PortValidationError) as info:
        pipe.forward(batch={"cube": torch.ones(2, 3, dtype=torch.int64)}, stage="val")
    message = str(info.value)
    assert "expected: Tensor[float32, (-1, C)]" in message
    assert "'torch.Tensor'" not in message


@pytest.mark.parametrize(
    ("item", "parameter", "unresolved"),
    [(typo.dotted, "cube", "torch.Tensr"), (typo.bare, "cube", "Tensr")],
)
def test_unresolvable_annotation_fails_at_build_naming_it(item, parameter, unresolved):
    with pytest.raises(DefinitionError) as info:
        Pipeline([item])
    error = info.value
    assert (error.node, error.port) == (item.name, parameter)
    assert f"parameter {parameter!r} names {unresolved!r}" in str(error)
    assert not isinstance(error, (NameError, AttributeError))
