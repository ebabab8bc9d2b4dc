"""Module nodes (@node on nn.Module classes and instances); a Pipeline as a module."""

# cuvis.ai-style INPUT_SPECS / OUTPUT_SPECS are class-level dicts.
# ruff: noqa: RUF012

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from cuvis_dsl import (
    Context,
    DefinitionError,
    ExecutionStage,
    Node,
    Pipeline,
    PortSpec,
    StageSet,
    WiringError,
    loss,
    node,
)
from cuvis_dsl._modules import snake_case

STAGES = ("train", "val", "test", "inference")


@node(outputs="features")
class ChannelMean(nn.Module):
    def forward(self, cube: Tensor) -> Tensor:
        return cube.mean(dim=-1)


@node(stages="train|val", outputs="scaled")
class Scale(nn.Module):
    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, features: Tensor) -> Tensor:
        return features * self.factor


# Names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("ChannelStats", "channel_stats"),
        ("RXDetector", "rx_detector"),
        ("PCA", "pca"),
        ("Linear", "linear"),
        ("Conv2dBlock", "conv2d_block"),
    ],
)
def test_default_node_name_is_the_class_name_in_snake_case(class_name, expected):
    assert snake_case(class_name) == expected


def test_decorated_module_instance_is_named_after_its_class():
    assert Pipeline([ChannelMean()]).specs.keys() == {"channel_mean"}


def test_node_renames_one_instance_and_returns_it():
    first = ChannelMean()
    renamed = node(first, name="band_mean")

    assert renamed is first
    assert Pipeline([first]).specs.keys() == {"band_mean"}
    assert Pipeline([ChannelMean()]).specs.keys() == {"channel_mean"}


def test_two_instances_of_one_class_need_two_names():
    a = node(Scale(), name="scale_a", outputs="a")
    b = node(Scale(3.0), name="scale_b", outputs="b")

    out = Pipeline([a, b]).forward(batch={"features": torch.ones(2)}, stage="val")

    assert torch.equal(out["a"], torch.full((2,), 2.0))
    assert torch.equal(out["b"], torch.full((2,), 3.0))


def test_module_node_name_must_be_an_identifier():
    with pytest.raises(DefinitionError, match="not an identifier") as caught:
        node(ChannelMean(), name="band.mean")
    assert caught.value.node == "band.mean"


# Undecorated modules -------------------------------------------------------


def test_undecorated_module_becomes_a_node_with_node_and_a_name():
    head = node(nn.Linear(4, 2), name="head", outputs="logits")
    pipe = Pipeline([node(head, inputs={"input": "features"}), ChannelMean()])

    out = pipe.forward(batch={"cube": torch.ones(3, 4, 5)}, stage="inference")

    assert out["logits"].shape == (3, 2)
    assert pipe.specs["head"].signature_text() == "(input<-features: Tensor) -> logits"


def test_undeclared_module_in_a_pipeline_says_how_to_declare_it():
    with pytest.raises(DefinitionError, match=r"(?s)not a node.*Fix: node\(") as caught:
        Pipeline([nn.Linear(4, 2)])
    assert caught.value.node == "linear"


def test_module_without_forward_is_rejected_at_decoration():
    class Empty(nn.Module):
        pass

    with pytest.raises(DefinitionError, match="defines no forward"):
        node(Empty)


def test_at_node_on_a_class_that_is_not_a_module_is_rejected():
    class NotAModule:
        def forward(self, x):
            return x

    with pytest.raises(DefinitionError, match=r"nn\.Module subclass"):
        node(NotAModule)


# Inheritance ---------------------------------------------------------------


def test_subclass_inherits_stages_and_outputs_but_not_the_name():
    @node(name="base_scale", stages="train", outputs="y")
    class Base(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x + 1

    class Derived(Base):
        def forward(self, x: Tensor) -> Tensor:
            return x + 2

    base_spec = Pipeline([Base()]).specs["base_scale"]
    derived_spec = Pipeline([Derived()]).specs["derived"]

    assert base_spec.stages == derived_spec.stages == StageSet("train")
    assert derived_spec.output_names == ("y",)


def test_redecorating_a_subclass_changes_only_what_it_says():
    @node(stages="train", outputs="y")
    class Base(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    @node(stages="val")
    class Derived(Base):
        pass

    spec = Pipeline([Derived()]).specs["derived"]

    assert spec.stages == StageSet("val")
    assert spec.output_names == ("y",)
    assert Pipeline([Base()]).specs["base"].stages == StageSet("train")


def test_loss_module_keeps_its_role_when_renamed():
    @loss
    class Mse(nn.Module):
        def forward(self, scaled: Tensor, target: Tensor) -> Tensor:
            return ((scaled - target) ** 2).mean()

    spec = Pipeline([node(Mse(), name="mse_loss")]).specs["mse_loss"]

    assert spec.role == "loss"
    assert spec.stages == StageSet("train|val|test")


def test_instance_stages_override_the_class_declaration():
    scale = node(Scale(), stages="inference")

    pipe = Pipeline([scale])

    assert pipe.specs["scale"].stages == StageSet("inference")
    assert pipe.plan("train").nodes == ()


# A pipeline is an nn.Module ------------------------------------------------


def test_parameters_of_module_nodes_are_the_pipeline_parameters():
    scale = Scale()
    pipe = Pipeline([ChannelMean(), scale])

    assert [p is scale.factor for p in pipe.parameters()] == [True]
    assert list(pipe.state_dict()) == ["scale.factor"]


def test_state_dict_round_trip_into_a_fresh_pipeline_is_strict():
    trained = Pipeline([ChannelMean(), Scale(5.0)])
    fresh = Pipeline([ChannelMean(), Scale()])

    fresh.load_state_dict(trained.state_dict(), strict=True)

    assert fresh["scale"].factor.item() == 5.0


def test_to_converts_module_nodes():
    pipe = Pipeline([ChannelMean(), Scale()]).to(torch.float64)

    assert pipe["scale"].factor.dtype == torch.float64


def test_train_and_eval_reach_module_nodes_and_forward_keeps_the_modes():
    dropout = node(nn.Dropout(0.5), name="dropout", outputs="dropped")
    pipe = Pipeline([dropout])

    pipe.eval()
    assert dropout.training is False
    pipe.forward(batch={"input": torch.ones(3)}, stage="train")
    assert dropout.training is False

    pipe.train()
    assert dropout.training is True
    pipe.forward(batch={"input": torch.ones(3)}, stage="val")
    assert dropout.training is True


def test_gradients_reach_module_node_parameters():
    pipe = Pipeline([ChannelMean(), Scale()])

    out = pipe.forward(batch={"cube": torch.ones(2, 3)}, stage="train")
    out["scaled"].sum().backward()

    assert pipe["scale"].factor.grad == pytest.approx(2.0)


def test_deep_copy_of_a_pipeline_runs_and_owns_its_modules():
    pipe = Pipeline([ChannelMean(), Scale()])
    twin = copy.deepcopy(pipe)

    out = twin.forward(batch={"cube": torch.ones(2, 3)}, stage="val")

    assert twin["scale"] is not pipe["scale"]
    assert torch.equal(out["scaled"], torch.full((2,), 2.0))


def test_module_node_receives_the_context_by_annotation():
    @node(outputs="seen")
    class Probe(nn.Module):
        def forward(self, x: Tensor, ctx: Context) -> tuple:
            return (ctx.stage, ctx.epoch)

    out = Pipeline([Probe()]).forward(
        batch={"x": torch.ones(1)}, context=Context(stage="test", epoch=4)
    )

    assert out["seen"] == (ExecutionStage.TEST, 4)


# Stage filtering is the same for every kind of node ------------------------


def _function_nodes(stages: list[StageSet]) -> list:
    @node(stages=stages[0], outputs="a")
    def first(x: Tensor) -> Tensor:
        return x + 1

    @node(stages=stages[1], outputs="b")
    def second(a: Tensor | None = None) -> Tensor:
        return torch.zeros(1) if a is None else a * 2

    @node(stages=stages[2], outputs="c")
    def third(x: Tensor, b: Tensor | None = None) -> Tensor:
        return x if b is None else x + b

    return [first, second, third]


def _decorated_module_nodes(stages: list[StageSet]) -> list:
    class First(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x + 1

    class Second(nn.Module):
        def forward(self, a: Tensor | None = None) -> Tensor:
            return torch.zeros(1) if a is None else a * 2

    class Third(nn.Module):
        def forward(self, x: Tensor, b: Tensor | None = None) -> Tensor:
            return x if b is None else x + b

    modules = [First(), Second(), Third()]
    names = ["first", "second", "third"]
    return [
        node(module, name=name, stages=stage, outputs=output)
        for module, name, stage, output in zip(modules, names, stages, "abc")
    ]


class _First(Node):
    OUTPUT_SPECS = {"a": PortSpec()}

    def forward(self, x, **_):
        return {"a": x + 1}


class _Second(Node):
    OUTPUT_SPECS = {"b": PortSpec()}

    def forward(self, a=None, **_):
        return {"b": torch.zeros(1) if a is None else a * 2}


class _Third(Node):
    OUTPUT_SPECS = {"c": PortSpec()}

    def forward(self, x, b=None, **_):
        return {"c": x if b is None else x + b}


def _class_form_nodes(stages: list[StageSet]) -> list:
    return [
        _First(execution_stages=stages[0], name="first"),
        _Second(execution_stages=stages[1], name="second"),
        _Third(execution_stages=stages[2], name="third"),
    ]


stage_sets = st.sets(st.sampled_from(STAGES), min_size=1).map(
    lambda chosen: StageSet("|".join(sorted(chosen)))
)


@settings(max_examples=30, deadline=None)
@given(stages=st.lists(stage_sets, min_size=3, max_size=3))
def test_module_and_function_nodes_are_filtered_by_stage_alike(stages):
    pipelines = [
        Pipeline(build(stages))
        for build in (_function_nodes, _decorated_module_nodes, _class_form_nodes)
    ]
    batch = {"x": torch.ones(1)}

    for stage in STAGES:
        plans = [pipe.plan(stage, batch=batch) for pipe in pipelines]
        runs = [pipe.forward(batch=batch, stage=stage) for pipe in pipelines]
        assert plans[0].nodes == plans[1].nodes == plans[2].nodes
        assert plans[0].skipped == plans[1].skipped == plans[2].skipped
        assert runs[0].keys() == runs[1].keys() == runs[2].keys()
        for name, value in runs[0].items():
            assert torch.equal(runs[1][name], value)
            assert torch.equal(runs[2][name], value)


def _rebinding_functions(stages: list[StageSet]) -> list:
    @node(stages=stages[0], outputs="x")
    def jitter(x: Tensor) -> Tensor:
        return x * 10

    @node(stages=stages[1], outputs="y")
    def extract(x: Tensor) -> Tensor:
        return x + 1

    @node(stages=stages[2], outputs="z")
    def head(y: Tensor) -> Tensor:
        return y * 2

    return [jitter, extract, head]


class _Jitter(Node):
    INPUT_SPECS = {"x": PortSpec()}
    OUTPUT_SPECS = {"x": PortSpec()}

    def forward(self, x, **_):
        return {"x": x * 10}


class _Extract(Node):
    OUTPUT_SPECS = {"y": PortSpec()}

    def forward(self, x, **_):
        return {"y": x + 1}


class _Head(Node):
    OUTPUT_SPECS = {"z": PortSpec()}

    def forward(self, y, **_):
        return {"z": y * 2}


def _rebinding_classes(stages: list[StageSet]) -> list:
    return [
        _Jitter(execution_stages=stages[0], name="jitter"),
        _Extract(execution_stages=stages[1], name="extract"),
        _Head(execution_stages=stages[2], name="head"),
    ]


def _outcome(build, stages: list[StageSet]) -> object:
    """Per stage: the nodes run and the outputs, or the wiring problems."""
    try:
        pipe = Pipeline(build(stages))
    except WiringError as error:
        return sorted((p.kind, p.node, p.port, str(p.stages)) for p in error.problems)
    batch = {"x": torch.ones(1)}
    return {
        stage: (
            pipe.plan(stage, batch=batch).nodes,
            {k: v.tolist() for k, v in pipe.forward(batch=batch, stage=stage).items()},
        )
        for stage in STAGES
    }


@settings(max_examples=30, deadline=None)
@given(stages=st.lists(stage_sets, min_size=3, max_size=3))
def test_rebinding_and_stage_gaps_behave_alike_for_both_forms(stages):
    assert _outcome(_rebinding_functions, stages) == _outcome(
        _rebinding_classes, stages
    )
