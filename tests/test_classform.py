"""The cuvis.ai-compatible class form: Node, LossNode, MetricNode."""

# cuvis.ai-style INPUT_SPECS / OUTPUT_SPECS are class-level dicts.
# ruff: noqa: RUF012

from __future__ import annotations

import copy
from typing import Annotated, TypedDict

import pytest
import torch
from torch import Tensor

from cuvis_dsl import (
    Context,
    DefinitionError,
    ExecutionStage,
    LossNode,
    MetricNode,
    Node,
    Pipeline,
    PortSpec,
    PortValidationError,
    StageSet,
    WiringError,
    loss,
    node,
)


class Doubler(Node):
    def forward(self, data, **_):
        return {"doubled": data * 2}


class Features(Node):
    OUTPUT_SPECS = {"features": PortSpec(dtype=torch.float32, shape=(-1, "C"))}

    def forward(self, cube, **_):
        return {"features": cube.mean(dim=1)}


def run(*nodes, stage="val", **batch):
    return Pipeline(list(nodes)).forward(batch=batch, stage=stage)


# Names and stages ----------------------------------------------------------


def test_default_name_is_the_class_name_in_snake_case():
    assert Doubler().name == "doubler"
    assert Doubler().node_spec().name == "doubler"


def test_name_argument_names_the_node_and_its_state_keys():
    class Offset(Node):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.register_buffer("bias", torch.ones(2))

        def forward(self, data, **_):
            return {"shifted": data + self.bias}

    pipe = Pipeline([Offset(name="offset_a")])

    assert list(pipe.state_dict()) == ["offset_a.bias"]


def test_invalid_name_is_a_definition_error():
    with pytest.raises(DefinitionError, match="not an identifier"):
        Doubler(name="my node")


def test_name_cannot_be_reassigned_and_the_error_says_how_to_rename():
    double = Doubler()
    with pytest.raises(AttributeError, match=r"node\(instance, name='twice'\)"):
        double.name = "twice"


@pytest.mark.parametrize(
    "stages",
    [
        {ExecutionStage.TRAIN, ExecutionStage.VAL},
        ExecutionStage.TRAIN | ExecutionStage.VAL,
        "train|val",
        ["train", "val"],
    ],
)
def test_execution_stages_accepts_every_spelling_of_a_stage_set(stages):
    assert Doubler(execution_stages=stages).execution_stages == StageSet("train|val")


def test_unknown_stage_name_is_a_value_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="valid stages: always, train"):
        Doubler(execution_stages={"trian"})


@pytest.mark.parametrize(
    ("base", "role", "stages"),
    [
        (Node, "node", "always"),
        (LossNode, "loss", "train|val|test"),
        (MetricNode, "metric", "val|test"),
    ],
)
def test_base_class_gives_the_role_and_its_default_stages(base, role, stages):
    class Probe(base):
        def forward(self, data, **_):
            return {"out": data}

    spec = Probe().node_spec()

    assert spec.role == role
    assert spec.stages == StageSet(stages)
    assert Probe(execution_stages="inference").node_spec().stages == StageSet(
        "inference"
    )


def test_subclass_init_that_forwards_kwargs_keeps_the_parent_stages():
    class MyMetric(MetricNode):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.threshold = 0.5

        def forward(self, scores, **_):
            return {"hits": (scores > self.threshold).sum()}

    assert MyMetric().execution_stages == StageSet("val|test")
    assert MyMetric(name="hits").name == "hits"


def test_node_call_renames_and_restages_an_instance():
    double = node(Doubler(), name="twice", stages="train")

    spec = Pipeline([double]).specs["twice"]

    assert double.name == "twice"
    assert spec.stages == StageSet("train")


def test_node_call_on_a_loss_instance_keeps_its_role():
    class Mse(LossNode):
        def forward(self, a, b, **_):
            return {"loss": ((a - b) ** 2).mean()}

    spec = node(Mse(), name="mse").node_spec()

    assert spec.role == "loss"
    assert spec.stages == StageSet("train|val|test")


def test_at_node_on_a_class_form_sets_its_class_level_stages():
    @node(stages="test")
    class Report(Node):
        def forward(self, data, **_):
            return {"report": data}

    assert Report().execution_stages == StageSet("test")
    assert Report(execution_stages="val").execution_stages == StageSet("val")


def test_at_loss_on_a_class_form_makes_it_a_loss():
    @loss
    class Penalty(Node):
        def forward(self, data, **_):
            return {"penalty": data.abs().sum()}

    assert Penalty().role == "loss"
    assert Penalty().execution_stages == StageSet("train|val|test")


def test_repr_shows_the_declaration():
    text = repr(Features(execution_stages="train"))

    assert "name='features'" in text and "stages=TRAIN" in text
    assert "(cube: Any) -> (features)" in text


# Ports read from forward ---------------------------------------------------


def test_ports_come_from_forward_and_trailing_kwargs_are_ignored():
    class Blend(Node):
        def forward(self, a, b: Tensor, weight: float = 0.5, **_):
            return {"blend": a * weight + b * (1 - weight)}

    spec = Blend().node_spec()

    assert [port.name for port in spec.inputs] == ["a", "b", "weight"]
    assert [port.optional for port in spec.inputs] == [False, False, True]
    assert spec.input("b").annotation is Tensor


def test_annotated_port_spec_on_forward_is_checked_at_run_time():
    class Center(Node):
        def forward(self, cube: Annotated[Tensor, PortSpec(dtype=torch.float32)], **_):
            return {"centered": cube - cube.mean()}

    with pytest.raises(PortValidationError, match="dtype mismatch") as caught:
        run(Center(), cube=torch.ones(2, dtype=torch.float64))
    assert caught.value.node == "center" and caught.value.port == "cube"


@pytest.mark.parametrize("how", ["annotation", "name"])
def test_context_parameter_is_not_a_port(how):
    if how == "annotation":

        class Probe(Node):
            def forward(self, data, ctx: Context, **_):
                return {"stage": ctx.stage}

    else:

        class Probe(Node):
            def forward(self, data, context, **_):
                return {"stage": context.stage}

    out = run(Probe(), stage="test", data=1)

    assert [port.name for port in Probe().node_spec().inputs] == ["data"]
    assert out["stage"] is ExecutionStage.TEST


def test_forward_reference_to_a_local_class_resolves_under_postponed_annotations():
    class Payload:
        pass

    class Unwrap(Node):
        def forward(self, item: Payload, **_):
            return {"kind": type(item).__name__}

    spec = Unwrap().node_spec()

    assert spec.input("item").annotation is Payload
    assert run(Unwrap(), item=Payload())["kind"] == "Payload"


def test_class_without_forward_can_be_built_but_not_used():
    class TrainingLoss(LossNode):
        pass

    instance = TrainingLoss()

    assert instance.execution_stages == StageSet("train|val|test")
    with pytest.raises(DefinitionError, match="defines no forward"):
        Pipeline([instance])


# INPUT_SPECS ---------------------------------------------------------------


def test_input_specs_give_the_ports_and_are_checked():
    class Select(Node):
        INPUT_SPECS = {
            "cube": PortSpec(dtype=torch.float32, shape=(-1, "C")),
            "weights": PortSpec(dtype=torch.float32, shape=("C",)),
        }

        def forward(self, cube, weights, **_):
            return {"selected": cube * weights}

    with pytest.raises(PortValidationError, match="symbolic dim C conflicts"):
        run(Select(), cube=torch.ones(2, 4), weights=torch.ones(3))
    out = run(Select(), cube=torch.ones(2, 4), weights=torch.ones(4))
    assert out["selected"].shape == (2, 4)


def test_context_entry_in_input_specs_receives_the_context():
    class MyNode(Node):
        INPUT_SPECS = {
            "data": PortSpec(dtype=torch.float32, shape=(-1, -1)),
            "context": PortSpec(dtype=Context, shape=()),
        }

        def forward(self, data, context: Context, **_):
            return {"output": data + context.epoch}

    spec = MyNode().node_spec()
    out = Pipeline([MyNode()]).forward(
        batch={"data": torch.zeros(1, 2)}, context=Context(stage="val", epoch=3)
    )

    assert [port.name for port in spec.inputs] == ["data"]
    assert spec.context == "context"
    assert torch.equal(out["output"], torch.full((1, 2), 3.0))


@pytest.mark.parametrize("declared", ["by name", "as an entry", "without specs"])
def test_positional_only_context_is_passed_by_position(declared):
    specs = {"data": PortSpec(dtype=torch.float32), "scale": PortSpec()}
    if declared == "as an entry":
        specs["context"] = PortSpec(dtype=Context)

    class Positional(Node):
        INPUT_SPECS = {} if declared == "without specs" else specs

        def forward(self, data, scale, context, /, **_):
            return {"out": data * scale + context.epoch}

    out = Pipeline([Positional()]).forward(
        batch={"data": torch.ones(2), "scale": 2.0},
        context=Context(stage="val", epoch=3),
    )

    assert torch.equal(out["out"], torch.full((2,), 5.0))
    assert Positional().node_spec().context_position == 2


def test_context_after_a_default_outside_input_specs_is_a_definition_error():
    with pytest.raises(DefinitionError, match="'extra'") as caught:

        class Gap(Node):
            INPUT_SPECS = {"data": PortSpec()}

            def forward(self, data, extra=1, context=None, /, **_):
                return {"out": data}

    assert caught.value.port == "extra"


def test_context_entry_with_a_data_dtype_is_an_ordinary_port():
    class Mix(Node):
        INPUT_SPECS = {"context": PortSpec(dtype=torch.float32)}

        def forward(self, context, **_):
            return {"mixed": context * 2}

    out = run(Mix(), context=torch.ones(1))

    assert Mix().node_spec().context is None
    assert torch.equal(out["mixed"], torch.full((1,), 2.0))


def test_input_spec_for_a_name_forward_does_not_take_needs_trailing_kwargs():
    with pytest.raises(DefinitionError, match=r"declares \['mask'\]") as caught:

        class Strict(Node):
            INPUT_SPECS = {"data": PortSpec(), "mask": PortSpec()}

            def forward(self, data):
                return {"out": data}

    assert caught.value.port == "mask"


def test_input_spec_names_forward_does_not_list_are_passed_by_keyword():
    class Loose(Node):
        INPUT_SPECS = {"data": PortSpec(), "mask": PortSpec()}

        def forward(self, **inputs):
            return {"masked": inputs["data"] * inputs["mask"]}

    out = run(Loose(), data=torch.ones(2), mask=torch.tensor([0.0, 1.0]))

    assert torch.equal(out["masked"], torch.tensor([0.0, 1.0]))


def test_required_forward_parameter_missing_from_input_specs_fails_at_definition():
    with pytest.raises(DefinitionError, match="missing from INPUT_SPECS") as caught:

        class Drifted(Node):
            INPUT_SPECS = {"data": PortSpec()}

            def forward(self, data, mask, **_):
                return {"out": data * mask}

    assert caught.value.port == "mask"


def test_forward_parameter_with_a_default_may_stay_out_of_input_specs():
    class Gain(Node):
        INPUT_SPECS = {"data": PortSpec()}

        def forward(self, data, gain=3, **_):
            return {"out": data * gain}

    assert [port.name for port in Gain().node_spec().inputs] == ["data"]
    assert run(Gain(), data=2)["out"] == 6


def test_optional_input_spec_without_a_producer_receives_none():
    class Maybe(Node):
        INPUT_SPECS = {"data": PortSpec(), "mask": PortSpec(optional=True)}

        def forward(self, data, mask, **_):
            return {"seen": mask}

    assert run(Maybe(), data=1)["seen"] is None


def test_scalar_python_spec_accepts_a_plain_number():
    class Threshold(Node):
        INPUT_SPECS = {"q": PortSpec(dtype=float, shape=())}

        def forward(self, q, **_):
            return {"half": q / 2}

    assert run(Threshold(), q=0.5)["half"] == 0.25


def test_list_spec_is_a_variadic_port_gathering_every_producer():
    class A(Node):
        OUTPUT_SPECS = {"part": PortSpec()}

        def forward(self, x, **_):
            return {"part": x + 1}

    class B(Node):
        OUTPUT_SPECS = {"part": PortSpec()}

        def forward(self, x, **_):
            return {"part": x + 2}

    class Gather(Node):
        INPUT_SPECS = {"part": [PortSpec()]}

        def forward(self, part, **_):
            return {"parts": part}

    assert Gather().node_spec().input("part").variadic
    assert run(A(), B(), Gather(), x=0)["parts"] == [1, 2]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({"data": "float32"}, r"INPUT_SPECS\['data'\] must be a PortSpec"),
        ({"data": [PortSpec(), PortSpec()]}, "list of 2 specs"),
        (
            {"c1": PortSpec(dtype=Context), "c2": PortSpec(dtype=Context)},
            "gives the Context to",
        ),
    ],
)
def test_malformed_input_specs_fail_at_class_definition(specs, message):
    with pytest.raises(DefinitionError, match=message):
        type("Bad", (Node,), {"INPUT_SPECS": specs, "forward": lambda self, **_: {}})


# Outputs -------------------------------------------------------------------


def test_output_specs_declare_outputs_that_other_nodes_consume():
    class Head(Node):
        def forward(self, features, **_):
            return {"logits": features.sum(dim=-1)}

    out = run(Features(), Head(), cube=torch.ones(2, 3, 4))

    assert out["features"].shape == (2, 4)
    assert torch.equal(out["logits"], torch.full((2,), 4.0))


def test_output_specs_are_checked_at_run_time():
    class Wrong(Node):
        OUTPUT_SPECS = {"features": PortSpec(dtype=torch.float32)}

        def forward(self, cube, **_):
            return {"features": cube.long()}

    with pytest.raises(PortValidationError, match="output 'features'"):
        run(Wrong(), cube=torch.ones(2))


def test_returning_a_key_outside_output_specs_is_an_error_naming_it():
    class Leaky(Node):
        OUTPUT_SPECS = {"features": PortSpec()}

        def forward(self, cube, **_):
            return {"features": cube, "debug": cube}

    with pytest.raises(TypeError, match=r"undeclared keys \['debug'\]"):
        run(Leaky(), cube=1)


def test_typed_dict_return_annotation_declares_the_outputs():
    class Moments(TypedDict):
        mean: Tensor
        std: Tensor

    class Stats(Node):
        def forward(self, cube: Tensor, **_) -> Moments:
            return {"mean": cube.mean(), "std": cube.std()}

    spec = Stats().node_spec()

    assert spec.returns == "several"
    assert spec.output_names == ("mean", "std")
    assert spec.outputs[0].annotation is Tensor


def test_variadic_output_spec_is_rejected():
    with pytest.raises(DefinitionError, match="declared variadic"):
        type(
            "Bad",
            (Node,),
            {"OUTPUT_SPECS": {"x": [PortSpec()]}, "forward": lambda self, **_: {}},
        )


def test_undeclared_outputs_are_outputs_of_the_run():
    out = run(Doubler(), data=torch.ones(2))

    assert Doubler().node_spec().returns == "undeclared"
    assert torch.equal(out["doubled"], torch.full((2,), 2.0))


def test_undeclared_keys_are_read_from_returned_dict_literals():
    class Branches(Node):
        def forward(self, data, fast: bool = False, **_):
            def helper():
                return {"ignored": 0}

            if fast:
                return dict(quick=data)
            return {"slow": data, "extra": helper()}

    assert Branches().node_spec().undeclared == ("quick", "slow", "extra")


def test_consuming_an_undeclared_output_is_a_wiring_error_that_says_declare_it():
    class Model(Node):
        def forward(self, doubled, **_):
            return {"predictions": doubled}

    with pytest.raises(WiringError, match=r"without declaring it") as caught:
        Pipeline([Doubler(), Model()])

    message = str(caught.value)
    assert "'doubled'" in message and "'doubler'" in message
    assert "OUTPUT_SPECS = {'doubled': PortSpec(...)}" in message


def test_outputs_argument_declares_the_outputs_of_an_instance():
    class Model(Node):
        def forward(self, doubled, **_):
            return {"predictions": doubled}

    pipe = Pipeline([node(Doubler(), outputs=["doubled"]), Model()])

    out = pipe.forward(batch={"data": 1}, stage="val")

    assert out["predictions"] == 2


def test_inputs_argument_renames_a_wire_of_an_instance():
    double = node(Doubler(), inputs={"data": "raw"})

    assert run(double, raw=4)["doubled"] == 8


def test_none_return_annotation_means_no_outputs():
    calls = []

    class Sink(Node):
        def forward(self, data, **_) -> None:
            calls.append(data)

    out = run(Sink(), data=5)

    assert Sink().node_spec().returns == "none"
    assert out == {} and calls == [5]


# A class-form node is an nn.Module ----------------------------------------


class Affine(Node):
    OUTPUT_SPECS = {"y": PortSpec()}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.linear = torch.nn.Linear(2, 1)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x, **_):
        return {"y": self.dropout(self.linear(x))}


def test_class_form_parameters_and_state_dict_are_the_pipeline_parameters():
    pipe = Pipeline([Affine()])

    assert sorted(pipe.state_dict()) == ["affine.linear.bias", "affine.linear.weight"]
    assert len(list(pipe.parameters())) == 2


def test_class_form_state_round_trips_strictly_and_follows_to_train_eval():
    trained, fresh = Pipeline([Affine()]), Pipeline([Affine()])

    fresh.load_state_dict(trained.state_dict(), strict=True)
    fresh.to(torch.float64).eval()

    assert torch.equal(
        fresh["affine"].linear.weight, trained["affine"].linear.weight.double()
    )
    assert fresh["affine"].dropout.training is False


def test_deep_copied_class_form_pipeline_keeps_its_specs_and_runs():
    twin = copy.deepcopy(Pipeline([Features(), Doubler(name="twice")]))

    out = twin.forward(batch={"cube": torch.ones(1, 2, 3), "data": 1}, stage="test")

    assert set(twin.specs) == {"features", "twice"}
    assert out["doubled"] == 2
