"""The @node, @loss and @metric decorators on functions and other callables."""

import functools
from typing import Annotated, Optional, TypedDict

import pytest
import torch
from torch import Tensor

from cuvis_dsl import (
    Context,
    DefinitionError,
    ExecutionStage,
    FunctionNode,
    Pipeline,
    PortSpec,
    StageSet,
    loss,
    metric,
    node,
)


def run(*nodes, stage="val", **batch):
    return Pipeline(list(nodes)).forward(batch=batch, stage=stage)


# Declaration forms ---------------------------------------------------------


def test_bare_decorator_defaults_to_always_and_the_function_name():
    @node
    def double(x: Tensor) -> Tensor:
        return 2 * x

    assert isinstance(double, FunctionNode)
    assert double.name == "double"
    assert double.stages == StageSet(ExecutionStage.ALWAYS)
    assert double.spec.output_names == ("double",)


def test_decorator_with_arguments_sets_stages_and_outputs():
    @node(stages=ExecutionStage.TRAIN | ExecutionStage.VAL, outputs="features")
    def extract(cube: Tensor) -> Tensor:
        return cube

    assert extract.stages == {ExecutionStage.TRAIN, ExecutionStage.VAL}
    assert extract.spec.output_names == ("features",)


@pytest.mark.parametrize(
    "stages", [{ExecutionStage.TRAIN}, "train", ["train"], ExecutionStage.TRAIN]
)
def test_stages_accept_every_spelling(stages):
    @node(stages=stages)
    def f(x):
        return x

    assert f.stages == {ExecutionStage.TRAIN}


def test_unknown_stage_in_decorator_raises_value_error():
    with pytest.raises(ValueError, match="Did you mean 'val'"):

        @node(stages="vall")
        def f(x):
            return x


def test_loss_and_metric_default_stages_and_roles():
    @loss
    def mse(pred, target):
        return pred

    @metric
    def acc(pred, target):
        return pred

    assert mse.stages == StageSet("train|val|test")
    assert acc.stages == StageSet("val|test")
    assert (mse.role, acc.role) == ("loss", "metric")
    assert repr(mse).startswith("<loss 'mse'")


def test_loss_and_metric_stages_can_be_overridden():
    @loss(stages="train")
    def mse(pred):
        return pred

    @metric(stages=ExecutionStage.ALWAYS)
    def acc(pred):
        return pred

    assert mse.stages == {ExecutionStage.TRAIN}
    assert acc.stages == StageSet(ExecutionStage.ALWAYS)


def test_decorated_function_stays_callable_as_itself():
    @node(stages="train")
    def scale(x: Tensor, factor: float = 2.0) -> Tensor:
        """Scale a tensor."""
        return x * factor

    assert torch.equal(scale(torch.ones(2)), torch.full((2,), 2.0))
    assert scale(torch.ones(1), factor=3.0).item() == 3.0
    assert scale.__name__ == "scale"
    assert scale.__doc__ == "Scale a tensor."
    assert scale.__wrapped__(torch.ones(1)).item() == 2.0


def test_repr_shows_ports_outputs_and_stages():
    @loss
    def bce(
        logits: Annotated[Tensor, PortSpec(dtype=torch.float32)], mask: Tensor
    ) -> Tensor:
        return logits

    assert repr(bce) == (
        "<loss 'bce' (logits: Tensor[float32], mask: Tensor) -> bce, "
        "stages=TRAIN|VAL|TEST>"
    )


def test_repr_shows_renamed_wires_and_several_outputs():
    @node(outputs=["lo", "hi"], inputs={"x": "cube"}, stages="val")
    def bounds(x: Tensor, q: float = 0.5):
        return x.min(), x.max()

    assert repr(bounds) == (
        "<node 'bounds' (x<-cube: Tensor, q: float = 0.5) -> (lo, hi), stages=VAL>"
    )


def test_non_callable_is_a_definition_error():
    with pytest.raises(DefinitionError, match="expects a function") as info:
        node(42)
    assert info.value.node == "42"


def test_definition_error_is_a_type_error():
    assert issubclass(DefinitionError, TypeError)


# Lambdas, partials, methods and callable objects ---------------------------


def test_unnamed_lambda_is_rejected_with_a_fix():
    with pytest.raises(DefinitionError, match=r"needs a name: write node\(lambda"):
        node(lambda x: x * 2)


def test_named_lambdas_are_distinct_nodes():
    double = node(lambda x: x * 2, name="double")
    triple = node(lambda x: x * 3, name="triple")
    assert run(double, triple, x=1) == {"double": 2, "triple": 3}


def test_partial_requires_a_name():
    def scale(x, factor):
        return x * factor

    with pytest.raises(DefinitionError, match="pass name="):
        node(functools.partial(scale, factor=2))


def test_partial_keywords_are_not_ports():
    def scale(x: Tensor, factor: float) -> Tensor:
        return x * factor

    double = node(functools.partial(scale, factor=2.0), name="double")
    assert [port.name for port in double.spec.inputs] == ["x"]
    assert double.spec.inputs[0].annotation is Tensor
    assert run(double, x=torch.ones(1))["double"].item() == 2.0


def test_bound_method_is_a_node_named_after_the_method():
    class Scaler:
        def __init__(self, k: float) -> None:
            self.k = k

        def apply(self, x: Tensor) -> Tensor:
            return x * self.k

    applied = node(Scaler(3.0).apply)
    assert applied.name == "apply"
    assert [port.name for port in applied.spec.inputs] == ["x"]
    assert run(applied, x=torch.ones(1))["apply"].item() == 3.0


def test_callable_object_needs_a_name_and_has_no_self_port():
    class Adder:
        def __call__(self, x: Tensor) -> Tensor:
            return x + 1

    with pytest.raises(DefinitionError, match="pass name="):
        node(Adder())
    adder = node(Adder(), name="adder")
    assert [port.name for port in adder.spec.inputs] == ["x"]
    assert run(adder, x=torch.zeros(1))["adder"].item() == 1.0


def test_invalid_name_is_rejected():
    with pytest.raises(DefinitionError, match="is not an identifier"):
        node(lambda x: x, name="not a name")


# Renaming and reuse ---------------------------------------------------------


def test_one_function_used_twice_under_two_names():
    @node
    def smooth(x: Tensor) -> Tensor:
        return x + 1

    first = node(smooth, name="smooth_a", inputs={"x": "raw"}, outputs="a")
    second = node(smooth, name="smooth_b", inputs={"x": "a"}, outputs="b")
    out = run(second, first, raw=torch.zeros(1))
    assert (out["a"].item(), out["b"].item()) == (1.0, 2.0)
    assert smooth.name == "smooth"
    assert first.func is second.func is smooth.func


def test_renaming_keeps_stages_unless_changed():
    @node(stages="train")
    def f(x):
        return x

    assert node(f, name="g").stages == {ExecutionStage.TRAIN}
    assert node(f, name="h", stages="val").stages == {ExecutionStage.VAL}


def test_renaming_a_node_renames_its_default_output():
    @node
    def f(x):
        return x

    assert node(f, name="g").spec.output_names == ("g",)


def test_loss_on_an_existing_node_changes_its_role():
    @node
    def err(x):
        return x

    as_loss = loss(err)
    assert as_loss.role == "loss"
    assert as_loss.stages == StageSet("train|val|test")


def test_inputs_renaming_an_unknown_parameter_is_an_error():
    with pytest.raises(DefinitionError, match="not input ports") as info:

        @node(inputs={"cbue": "raw"})
        def f(cube):
            return cube

    assert info.value.port == "cbue"
    assert info.value.node == "f"


# Input ports ---------------------------------------------------------------


def test_parameter_kinds_become_ports_in_signature_order():
    @node
    def f(a, /, b, *rest, c, d=1, **options):
        return a

    ports = [(p.name, p.kind, p.optional, p.variadic) for p in f.spec.inputs]
    assert ports == [
        ("a", "positional-only", False, False),
        ("b", "positional", False, False),
        ("rest", "varargs", True, True),
        ("c", "keyword", False, False),
        ("d", "keyword", True, False),
    ]


def test_trailing_kwargs_is_ignored():
    @node
    def f(data, **_):
        return data

    assert [port.name for port in f.spec.inputs] == ["data"]
    assert run(f, data=3) == {"f": 3}


def test_keyword_only_parameters_are_passed_by_keyword():
    calls = []

    @node
    def scale(cube, *, factor, offset=0.0):
        calls.append((factor, offset))
        return cube * factor + offset

    assert run(scale, cube=1.0, factor=3.0) == {"scale": 3.0}
    assert run(scale, cube=1.0, factor=3.0, offset=1.0) == {"scale": 4.0}
    assert calls == [(3.0, 0.0), (3.0, 1.0)]


def test_varargs_receive_every_producer_in_node_name_order():
    @node(outputs="part")
    def b_part() -> int:
        return 2

    @node(outputs="part")
    def a_part() -> int:
        return 1

    @node
    def gather(*part: int) -> tuple:
        return part

    assert run(gather, b_part, a_part)["gather"] == (1, 2)


def test_varargs_without_producers_receive_nothing():
    @node
    def gather(*part):
        return part

    assert run(gather) == {"gather": ()}


def test_unannotated_parameters_are_ports_of_any_type():
    @node
    def f(x, y=2):
        return x

    assert [str(p.annotation) for p in f.spec.inputs] == ["typing.Any"] * 2
    assert f.spec.input("y").default == 2


def test_default_or_optional_marks_a_port_optional():
    @node
    def f(a: Tensor, b: Tensor = None, c: Optional[Tensor] = None, d: int = 0):  # noqa: UP045
        return a

    assert [p.optional for p in f.spec.inputs] == [False, True, True, True]
    assert f.spec.input("c").has_default


def test_optional_without_default_is_optional_and_receives_none():
    @node
    def f(a: int, b: Optional[int]) -> tuple:  # noqa: UP045
        return a, b

    assert f.spec.input("b").optional
    assert not f.spec.input("b").has_default
    assert run(f, a=1) == {"f": (1, None)}


def test_port_spec_in_annotated_sets_dtype_and_shape():
    @node
    def f(cube: Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, "C"))]):
        return cube

    port = f.spec.input("cube")
    assert port.annotation is Tensor
    assert port.spec == PortSpec(dtype=torch.float32, shape=(-1, "C"))


def test_variadic_port_spec_takes_the_element_type_of_a_list():
    @node
    def monitor(items: Annotated[list[Tensor], PortSpec(variadic=True)]):
        return items

    port = monitor.spec.input("items")
    assert port.variadic and port.annotation is Tensor


def test_variadic_input_named_like_its_own_output_is_rejected():
    with pytest.raises(DefinitionError, match="cannot be rebound") as info:

        @node
        def part(*part):
            return part

    assert info.value.port == "part"


# Outputs -------------------------------------------------------------------


def test_single_output_returns_a_dict_unchanged():
    @node
    def f(x) -> dict:
        return {"a": 1}

    assert run(f, x=0) == {"f": {"a": 1}}


def test_several_outputs_from_a_tuple_or_a_mapping():
    @node(outputs=["lo", "hi"])
    def as_tuple(x: Tensor) -> tuple[Tensor, int]:
        return x.min(), 3

    @node(outputs=("mean", "n"))
    def as_mapping(x: Tensor):
        return {"n": 2, "mean": x.mean()}

    assert [p.annotation for p in as_tuple.spec.outputs] == [Tensor, int]
    out = run(as_tuple, as_mapping, x=torch.tensor([1.0, 3.0]))
    assert (out["lo"].item(), out["hi"], out["mean"].item(), out["n"]) == (
        1.0,
        3,
        2.0,
        2,
    )
    assert as_tuple.spec.returns == "several"


def test_typed_dict_return_declares_several_typed_outputs():
    class Stats(TypedDict):
        mean: Tensor
        count: Annotated[int, PortSpec(description="samples")]

    @node
    def stats(x: Tensor) -> Stats:
        return {"mean": x.mean(), "count": len(x)}

    assert stats.spec.output_names == ("mean", "count")
    assert stats.spec.outputs[1].spec.description == "samples"
    out = run(stats, x=torch.tensor([2.0, 4.0]))
    assert (out["mean"].item(), out["count"]) == (3.0, 2)


def test_typed_dict_that_disagrees_with_outputs_is_rejected():
    class Stats(TypedDict):
        mean: Tensor

    with pytest.raises(DefinitionError, match="make them agree"):

        @node(outputs=["mean", "std"])
        def stats(x) -> Stats:
            return {"mean": x}


def test_none_return_annotation_declares_no_output():
    seen = []

    @node
    def log(x) -> None:
        seen.append(x)

    assert log.spec.outputs == ()
    assert run(log, x=5) == {}
    assert seen == [5]


@pytest.mark.parametrize(
    ("outputs", "fragment"),
    [([], "outputs= is empty"), (["a", "a"], "repeats a name"), (["1x"], "identifier")],
)
def test_bad_output_names_are_rejected(outputs, fragment):
    with pytest.raises(DefinitionError, match=fragment):
        node(lambda x: x, name="f", outputs=outputs)


def test_several_outputs_with_wrong_return_shape_raise_with_the_node_name():
    @node(outputs=["a", "b"])
    def f(x):
        return (1, 2, 3)

    with pytest.raises(TypeError, match="node 'f' returned tuple") as info:
        run(f, x=0)
    assert "must return a tuple of 2 values" in str(info.value)


def test_several_outputs_mapping_with_unknown_key_is_rejected():
    @node(outputs=["a", "b"])
    def f(x):
        return {"a": 1, "b": 2, "c": 3}

    with pytest.raises(TypeError, match=r"undeclared keys \['c'\]"):
        run(f, x=0)


# Context injection --------------------------------------------------------


def test_context_by_annotation_is_injected_and_not_a_port():
    @node
    def f(x, ctx: Context):
        return ctx

    assert f.spec.context == "ctx"
    assert [port.name for port in f.spec.inputs] == ["x"]
    context = Context(stage="val", epoch=3, batch_idx=2)
    assert Pipeline([f]).forward(batch={"x": 1}, context=context)["f"] is context


def test_unannotated_parameter_named_context_receives_the_context():
    @node
    def f(x, context):
        return context

    assert f.spec.context == "context"
    assert run(f, stage="test", x=1)["f"].stage is ExecutionStage.TEST


def test_context_parameter_annotated_as_tensor_is_a_data_port():
    @node
    def f(x: Tensor, context: Tensor) -> Tensor:
        return context

    assert f.spec.context is None
    assert [port.name for port in f.spec.inputs] == ["x", "context"]
    data = torch.ones(2)
    assert run(f, x=data, context=data)["f"] is data


@pytest.mark.parametrize("position", ["first", "keyword-only", "optional"])
def test_context_is_passed_in_any_parameter_position(position):
    if position == "first":

        def body(ctx: Context, x):
            return ctx.epoch, x

    elif position == "keyword-only":

        def body(x, *, ctx: Context):
            return ctx.epoch, x

    else:

        def body(x, ctx: Context | None = None):
            return ctx.epoch, x

    f = node(body, name="f")
    out = Pipeline([f]).forward(batch={"x": 7}, context=Context(stage="val", epoch=4))
    assert out["f"] == (4, 7)


def test_context_requested_twice_is_a_definition_error():
    with pytest.raises(DefinitionError, match="asks for the Context twice") as info:

        @node
        def f(a: Context, b: Context):
            return a

    assert (info.value.node, info.value.port) == ("f", "b")


def test_context_as_varargs_is_a_definition_error():
    with pytest.raises(DefinitionError, match="cannot receive the Context"):

        @node
        def f(*context):
            return context


# Forward references -------------------------------------------------------


@node
def wrap(x) -> "Box":
    return Box(x)


class Box:
    def __init__(self, value):
        self.value = value


def test_forward_reference_to_a_later_module_class_resolves():
    assert wrap.spec.outputs[0].annotation is Box
    assert repr(wrap) == "<node 'wrap' (x: Any) -> wrap, stages=ALWAYS>"


def test_unresolvable_annotation_names_node_parameter_and_name():
    @node
    def f(x: "Tensr"):  # noqa: F821
        return x

    assert "unresolved annotations" in repr(f)
    with pytest.raises(DefinitionError, match="names 'Tensr', which is not defined"):
        Pipeline([f])
    with pytest.raises(DefinitionError) as info:
        _ = f.spec
    assert (info.value.node, info.value.port) == ("f", "x")


def test_non_node_in_a_pipeline_is_a_definition_error():
    def plain(x):
        return x

    with pytest.raises(DefinitionError, match="is not a node; decorate it"):
        Pipeline([plain])


def test_repr_of_varargs_shows_the_fan_in_without_a_default():
    @node
    def gather(*part: int) -> int:
        return sum(part)

    assert repr(gather) == "<node 'gather' (part: *int) -> gather, stages=ALWAYS>"


def test_empty_stages_are_a_definition_error():
    with pytest.raises(DefinitionError, match="no stages"):
        node(lambda x: x, name="never", stages=[])
