"""PortSpec values, run-time port checks and producer/consumer compatibility."""

# ruff: noqa: UP007, UP045  (the typing.Optional and Union spellings are under test)

from typing import Any, Optional, Union

import pytest
import torch

from cuvis_dsl import Port, PortSpec
from cuvis_dsl._ports import (
    SpecViolation,
    compile_check,
    describe_type,
    incompatibility,
    summarize,
)

F32 = torch.float32


def _port(annotation: Any = Any, name: str = "x", **spec: Any) -> Port:
    return Port(name=name, wire=name, spec=PortSpec(**spec), annotation=annotation)


# PortSpec ------------------------------------------------------------------


def test_port_spec_is_an_immutable_hashable_value():
    spec = PortSpec(dtype=F32, shape=(-1, "C"), description="cube")
    twin = PortSpec(dtype=F32, shape=[-1, "C"], description="cube")
    assert spec == twin
    assert hash(spec) == hash(twin)
    assert len({spec, twin}) == 1
    with pytest.raises(AttributeError):
        spec.dtype = torch.float64  # type: ignore[misc]


def test_port_spec_shape_accepts_a_single_dim():
    assert PortSpec(shape=3).shape == (3,)
    assert PortSpec(shape="C").shape == ("C",)


def test_port_spec_repr_shows_only_what_was_declared():
    assert repr(PortSpec()) == "PortSpec()"
    full = PortSpec(dtype=F32, shape=(-1, "C"), description="d", optional=True)
    assert repr(full) == "PortSpec(float32, (-1, C), optional, 'd')"
    assert repr(PortSpec(shape=(3,), variadic=True)) == "PortSpec((3,), variadic)"
    assert repr(PortSpec(dtype=int)) == "PortSpec(int)"


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"shape": (-2,)}, ValueError, "-2 is not a size"),
        ({"shape": ("a b",)}, ValueError, "'a b' is not a name"),
        ({"shape": (1.5,)}, TypeError, "entries are ints"),
        ({"shape": (True,)}, TypeError, "entries are ints"),
        ({"shape": {1: 2}}, TypeError, "must be a tuple of dims"),
        ({"dtype": "float32"}, TypeError, "must be a torch.dtype or a Python type"),
    ],
)
def test_port_spec_rejects_malformed_fields(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        PortSpec(**kwargs)


def test_merge_fills_only_unset_fields():
    mine = PortSpec(dtype=F32, description="mine")
    other = PortSpec(dtype=torch.int64, shape=(2,), description="other", optional=True)
    merged = mine.merge(other)
    assert merged == PortSpec(dtype=F32, shape=(2,), description="mine", optional=True)


# Rendering ----------------------------------------------------------------


def test_summarize_never_prints_tensor_contents():
    assert summarize(torch.zeros(8, 61)) == "Tensor[float32, (8, 61), cpu]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2, 3, 4], "list[1, 2, 3, ...] (len 4)"),
        ((torch.ones(1),), "tuple[Tensor[float32, (1,), cpu]] (len 1)"),
        ({"a": 1}, "dict(keys: 'a')"),
        (None, "None"),
        (2.5, "2.5"),
        ("short", "'short'"),
        ("x" * 50, repr("x" * 37 + "...")),
    ],
)
def test_summarize_is_short_for_containers_and_scalars(value, expected):
    assert summarize(value) == expected


def test_summarize_names_the_type_of_other_objects():
    class Cube:
        pass

    assert summarize(Cube()).endswith("Cube")


@pytest.mark.parametrize(
    ("annotation", "spec", "expected"),
    [
        (
            torch.Tensor,
            PortSpec(dtype=F32, shape=(-1, "C")),
            "Tensor[float32, (-1, C)]",
        ),
        (torch.Tensor, PortSpec(), "Tensor"),
        (int, PortSpec(dtype=int), "int"),
        (Any, PortSpec(), "Any"),
        (Optional[int], PortSpec(), "Optional[int]"),
    ],
)
def test_describe_type_shows_symbolic_names_and_dtypes(annotation, spec, expected):
    assert describe_type(annotation, spec) == expected


def test_port_describe_marks_variadic_and_defaults():
    variadic = Port(
        name="xs", wire="xs", spec=PortSpec(variadic=True), annotation=torch.Tensor
    )
    assert variadic.describe() == "*Tensor"
    defaulted = Port(name="q", wire="q", spec=PortSpec(optional=True), default=0.5)
    assert defaulted.describe() == "Any = 0.5"
    optional = Port(name="m", wire="m", spec=PortSpec(optional=True))
    assert optional.describe() == "Any = None"
    assert not optional.has_default


# Run-time checks ---------------------------------------------------------


def _violation(check, value, bindings=None, port="x") -> SpecViolation:
    with pytest.raises(SpecViolation) as info:
        check(value, {} if bindings is None else bindings, port)
    return info.value


def test_nothing_to_check_gives_no_check():
    assert compile_check(Any, PortSpec()) is None
    assert compile_check(object, PortSpec()) is None


def test_type_check_accepts_instances_and_rejects_others():
    check = compile_check(torch.Tensor, PortSpec())
    check(torch.ones(1), {}, "x")
    violation = _violation(check, "text")
    assert violation.reason == "type mismatch: got 'text'"
    assert violation.expected == "Tensor"


def test_float_port_accepts_ints_as_python_does():
    check = compile_check(float, PortSpec())
    check(1, {}, "q")
    check(0.5, {}, "q")
    _violation(check, "0.5")


def test_optional_annotation_admits_none():
    check = compile_check(Optional[torch.Tensor], PortSpec())
    check(None, {}, "m")
    check(torch.ones(1), {}, "m")
    _violation(check, 3)


def test_union_annotation_admits_each_member():
    check = compile_check(Union[int, str], PortSpec())
    check(1, {}, "v")
    check("a", {}, "v")
    _violation(check, 1.5)


def test_dtype_mismatch_names_the_actual_dtype_and_shape():
    check = compile_check(torch.Tensor, PortSpec(dtype=F32, shape=(-1, "C")))
    violation = _violation(check, torch.ones(2, 3, dtype=torch.float64))
    assert "dtype mismatch" in violation.reason
    assert "Tensor[float64, (2, 3), cpu]" in violation.reason
    assert violation.expected == "Tensor[float32, (-1, C)]"


def test_rank_mismatch_names_both_ranks():
    check = compile_check(torch.Tensor, PortSpec(shape=(-1, -1, "C")))
    violation = _violation(check, torch.ones(2, 3))
    assert "expected 3 dims" in violation.reason
    assert "(2, 3)" in violation.reason


def test_fixed_dim_must_match_and_wildcard_accepts_any_size():
    check = compile_check(torch.Tensor, PortSpec(shape=(-1, 4)))
    for rows in (0, 1, 7):
        check(torch.ones(rows, 4), {}, "x")
    violation = _violation(check, torch.ones(2, 5))
    assert "dim 1 must be 4" in violation.reason


def test_spec_with_shape_rejects_non_tensors():
    check = compile_check(Any, PortSpec(shape=(2,)))
    assert "not a tensor" in _violation(check, [1, 2]).reason


def test_python_dtype_is_checked_with_isinstance():
    check = compile_check(Any, PortSpec(dtype=str))
    check("a", {}, "name")
    _violation(check, 1)


def test_symbolic_dim_binds_across_ports_of_one_call():
    cube = compile_check(torch.Tensor, PortSpec(shape=(-1, "C")))
    weights = compile_check(torch.Tensor, PortSpec(shape=("C",)))
    bindings: dict = {}
    cube(torch.ones(2, 4), bindings, "cube")
    assert bindings == {"C": (4, "cube")}
    weights(torch.ones(4), bindings, "weights")
    violation = _violation(weights, torch.ones(3), bindings, port="weights")
    assert "C=4 from 'cube'" in violation.reason
    assert "C=3 from 'weights'" in violation.reason
    assert violation.expected == "Tensor[(C,)]"


def test_symbolic_dim_within_one_port_must_agree():
    square = compile_check(torch.Tensor, PortSpec(shape=("N", "N")))
    square(torch.ones(3, 3), {}, "m")
    assert "symbolic dim N conflicts" in _violation(square, torch.ones(3, 2)).reason


# Build-time compatibility ------------------------------------------------


def test_same_declarations_are_compatible():
    out = _port(torch.Tensor, dtype=F32, shape=(-1, "C"))
    assert incompatibility(out, _port(torch.Tensor, dtype=F32, shape=(-1, "C"))) is None


def test_unrelated_types_are_incompatible():
    reason = incompatibility(_port(str), _port(torch.Tensor))
    assert reason == "type str cannot feed Tensor"


def test_subclass_output_feeds_base_class_input():
    assert incompatibility(_port(bool), _port(int)) is None


def test_undeclared_side_is_compatible_with_anything():
    assert incompatibility(_port(Any), _port(torch.Tensor, dtype=F32)) is None
    assert incompatibility(_port(torch.Tensor, dtype=F32), _port(Any)) is None


def test_optional_output_is_not_rejected_at_build_time():
    assert incompatibility(_port(Optional[str]), _port(torch.Tensor)) is None


def test_different_tensor_dtypes_are_incompatible():
    reason = incompatibility(
        _port(torch.Tensor, dtype=torch.int64), _port(torch.Tensor, dtype=F32)
    )
    assert reason == "dtype int64 cannot feed float32"


def test_different_ranks_are_incompatible():
    reason = incompatibility(_port(shape=(-1, 3)), _port(shape=(-1, -1, 3)))
    assert "has 2 dims" in reason and "needs 3" in reason


def test_conflicting_fixed_dims_are_incompatible_but_wildcards_are_not():
    reason = incompatibility(_port(shape=(2, 3)), _port(shape=(2, 4)))
    assert reason is not None and "dim 1 is 3" in reason
    assert incompatibility(_port(shape=(2, -1)), _port(shape=(2, 4))) is None
    assert incompatibility(_port(shape=(2, "C")), _port(shape=(2, 4))) is None


def test_typeddict_and_plain_protocol_annotations_are_left_unchecked():
    from typing import Protocol, TypedDict

    class Stats(TypedDict):
        mean: float

    class HasMean(Protocol):
        def mean(self) -> float: ...

    assert compile_check(Stats, PortSpec()) is None
    assert compile_check(HasMean, PortSpec()) is None
    assert compile_check(dict, PortSpec()) is not None
