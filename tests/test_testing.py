"""The property-testing toolkit: strategies, call records and `check_pipeline`."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import Tensor

from cuvis_dsl import (
    Context,
    ExecutionStage,
    Pipeline,
    PortSpec,
    StageSet,
    metric,
    node,
)
from cuvis_dsl.testing import (
    PipelineCheckError,
    batches,
    check_pipeline,
    contexts,
    pipelines,
    record_calls,
    requested_outputs,
    stage_sets,
    stages,
    tensors,
)
from cuvis_dsl.testing._synthetic import (
    InputDraft,
    NodeDraft,
    OutputDraft,
    PipelineDraft,
)

Cube = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=("N", "C"))]
Scores = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=("N",))]
FEW = settings(max_examples=20, deadline=None)
CONCRETE = {"train", "val", "test", "inference"}
# The explain phase traces coverage of every failing run; slow and not needed.
QUICK_PHASES = [phase for phase in Phase if phase is not Phase.explain]


@node
def scores(cube: Cube) -> Scores:
    return cube.mean(dim=-1)


@metric
def top(scores: Scores) -> Tensor:
    return scores.max()


def test_importing_cuvis_dsl_does_not_import_hypothesis():
    code = "import sys, cuvis_dsl; print('hypothesis' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@FEW
@given(stages())
def test_stages_draws_only_concrete_stages(stage):
    assert stage.value in CONCRETE


@FEW
@given(stage_sets())
def test_stage_sets_draws_non_empty_sets_of_concrete_stages(stage_set):
    assert isinstance(stage_set, StageSet)
    assert 1 <= len(stage_set) <= 4
    assert {stage.value for stage in stage_set} <= CONCRETE


@FEW
@given(contexts(stage="test"))
def test_contexts_keeps_the_given_stage(context):
    assert isinstance(context, Context)
    assert context.stage is ExecutionStage.TEST


@FEW
@given(tensors(PortSpec(dtype=torch.int16, shape=(2, -1, "C", "C"))))
def test_tensors_match_dtype_fixed_dims_and_repeated_symbolic_dims(value):
    assert value.dtype is torch.int16
    assert value.dim() == 4
    assert value.shape[0] == 2
    assert value.shape[2] == value.shape[3]
    assert 1 <= value.shape[1] <= 4


@FEW
@given(tensors(PortSpec(shape=("C", 40)), sizes={"C": 3}))
def test_tensors_bind_given_sizes_and_fill_large_shapes_within_range(value):
    assert value.shape == (3, 40)
    assert value.dtype is torch.float32
    assert bool(value.isfinite().all())
    assert bool((value.abs() <= 10).all())


@FEW
@given(tensors(PortSpec(dtype=torch.bool, shape=(-1,))))
def test_tensors_of_bool_dtype(value):
    assert value.dtype is torch.bool


def test_tensors_rejects_a_python_dtype():
    with pytest.raises(InvalidArgument, match="torch dtype"):
        tensors(PortSpec(dtype=str)).example()


def weigh_pipeline():
    @node
    def weigh(
        cube: Cube,
        weights: Annotated[Tensor, PortSpec(shape=("C",))],
        bias: Annotated[Tensor, PortSpec(dtype=torch.float64, shape=(3,))],
        scale: float = 1.0,
    ) -> Tensor:
        return cube @ weights * scale

    @node(stages="train")
    def noise(cube: Cube, mask: Tensor | None = None) -> Tensor:
        return cube

    return Pipeline([weigh, noise])


@FEW
@given(batches(weigh_pipeline(), stage="val"))
def test_batches_share_symbolic_dims_across_inputs_and_keep_fixed_ones(batch):
    assert (
        {"cube", "weights", "bias"}
        <= set(batch)
        <= {"cube", "weights", "bias", "scale"}
    )
    assert batch["cube"].shape[1] == batch["weights"].shape[0]
    assert batch["bias"].shape == (3,) and batch["bias"].dtype is torch.float64
    assert isinstance(batch.get("scale", 0.0), float)


def test_batches_include_optional_inputs_only_sometimes():
    strategy = batches(weigh_pipeline(), stage="train")
    assert "mask" in find(strategy, lambda batch: "mask" in batch)
    assert "mask" not in find(strategy, lambda batch: "mask" not in batch)


def test_batches_use_overrides_as_given():
    strategy = batches(weigh_pipeline(), stage="val", overrides={"scale": st.just(0.5)})
    assert find(strategy, lambda batch: "scale" in batch)["scale"] == 0.5


def test_batches_reject_ports_that_disagree_on_a_fixed_size():
    @node
    def a(x: Annotated[Tensor, PortSpec(shape=(3,))]) -> Tensor:
        return x

    @node
    def b(x: Annotated[Tensor, PortSpec(shape=(4,))]) -> Tensor:
        return x

    with pytest.raises(InvalidArgument, match="needs size 3"):
        batches(Pipeline([a, b]))


def test_batches_ask_for_an_override_for_types_they_cannot_draw():
    @node
    def f(x: Context | None = None, y: bytes = b"") -> Tensor:
        return torch.zeros(1)

    with pytest.raises(InvalidArgument, match="overrides=") as caught:
        batches(Pipeline([f]))
    assert "'y'" in str(caught.value)


@FEW
@given(data=st.data())
def test_requested_outputs_name_only_outputs_of_nodes_running_in_the_stage(data):
    pipe = Pipeline([scores, top])
    request = data.draw(requested_outputs(pipe, "inference"))
    assert request in (None, ("scores",))


@FEW
@given(pipe=pipelines(max_nodes=6), data=st.data())
def test_record_calls_sees_the_planned_nodes_in_order(pipe, data):
    stage = data.draw(stages())
    batch = data.draw(batches(pipe, stage=stage))
    with record_calls() as calls:
        pipe.forward(batch=batch, stage=stage)
    assert [call.node for call in calls] == list(pipe.plan(stage, batch=batch).nodes)


def test_record_calls_records_nothing_outside_the_block():
    only = NodeDraft(
        name="only",
        stages=StageSet("val"),
        inputs=(InputDraft("x0", "x0", "NC", "required", ("N", "C"), True),),
        outputs=(OutputDraft(name="out", kind="N"),),
    )
    pipe = PipelineDraft(nodes=(only,), externals={"x0": "NC"}).build()
    with record_calls() as calls:
        pass
    pipe.forward(batch={"x0": torch.ones(2, 3)}, stage="val")
    assert calls == []
    with record_calls() as calls:
        pipe.forward(batch={"x0": torch.ones(2, 3)}, stage="val")
    assert [call.node for call in calls] == ["only"]


# check_pipeline: passes on good pipelines, finds seeded mistakes


@settings(max_examples=15, deadline=None)
@given(pipelines(max_nodes=8))
def test_check_pipeline_accepts_every_generated_pipeline(pipe):
    check_pipeline(pipe)


def test_check_pipeline_accepts_a_correct_pipeline_as_a_one_line_test():
    check_pipeline(Pipeline([scores, top]), max_examples=10)


def test_check_pipeline_reports_a_required_input_whose_producer_is_skipped():
    @node(stages="train")
    def mask(cube: Cube) -> Tensor:
        return cube > 0

    @node
    def masked(cube: Cube, mask: Tensor) -> Tensor:
        return cube * mask

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline([mask, masked])
    error = caught.value
    assert (error.check, error.node, error.port) == ("wiring", "masked", "mask")
    assert error.stage is not ExecutionStage.TRAIN
    assert "runs in TRAIN" in str(error)


def test_check_pipeline_reports_given_batches_that_lack_a_required_input():
    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([scores, top]), batches=st.just({}), max_examples=2)
    error = caught.value
    assert (error.check, error.node, error.batch) == ("plan", "scores", "(empty)")
    assert "input 'cube' of node 'scores'" in str(error)


def test_check_pipeline_finds_an_output_that_breaks_its_shape_on_some_batch():
    @node
    def squeezed(cube: Cube) -> Scores:
        return cube.mean(dim=-1).squeeze()

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([squeezed]), max_examples=30)
    error = caught.value
    assert (error.check, error.node, error.port) == ("spec", "squeezed", "squeezed")
    assert "rank mismatch" in str(error)
    assert error.batch == "cube=Tensor[float32, (1, 1), cpu]"
    assert str(error).splitlines()[-1].startswith("  Fix:")


def test_check_pipeline_finds_a_node_that_is_not_deterministic_in_inference():
    @node(stages="inference")
    def noisy(scores: Scores) -> Tensor:
        return scores + torch.rand(scores.shape)

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([scores, noisy]), max_examples=10)
    error = caught.value
    assert (error.check, error.stage, error.node) == (
        "deterministic",
        ExecutionStage.INFERENCE,
        "noisy",
    )


def test_check_pipeline_finds_a_val_node_that_creates_a_tensor_requiring_grad():
    @node(stages="val")
    def weighted(cube: Cube) -> Tensor:
        weights = torch.ones(cube.shape[-1], requires_grad=True)
        return cube @ weights

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([weighted]), max_examples=10)
    error = caught.value
    assert (error.check, error.stage, error.node) == (
        "grad",
        ExecutionStage.VAL,
        "weighted",
    )
    assert "torch.ones" in str(error)


def test_check_pipeline_finds_a_parameter_returned_as_it_is_outside_train():
    @node(stages="test")
    class Bias(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(1))

        def forward(self, cube: Cube) -> Tensor:
            return self.bias

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([Bias()]), max_examples=5)
    assert (caught.value.check, caught.value.node) == ("grad", "bias")
    assert "returned as result" in str(caught.value)


def test_check_pipeline_finds_a_node_changing_its_input_in_place():
    @node
    def doubled(cube: Cube) -> Cube:
        return cube.mul_(2)

    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(Pipeline([doubled]), max_examples=5)
    error = caught.value
    assert (error.check, error.node, error.port) == ("mutation", "doubled", "cube")


def test_check_pipeline_cross_checks_the_plan_against_the_specs(monkeypatch):
    pipe = Pipeline([scores, top])
    monkeypatch.setattr(
        pipe,
        "plan",
        lambda stage, outputs=None, batch=None: Pipeline.plan(
            pipe, stage, ["scores"], batch
        ),
    )
    with pytest.raises(PipelineCheckError) as caught:
        check_pipeline(pipe, stages=["val"], max_examples=5)
    assert (caught.value.check, caught.value.node) == ("plan", "top")


def test_check_pipeline_lets_a_node_exception_through_with_a_note():
    @node
    def picky(cube: Cube) -> Tensor:
        if cube.shape[0] > 2:
            raise RuntimeError("too many rows")
        return cube

    with pytest.raises(RuntimeError, match="too many rows") as caught:
        check_pipeline(Pipeline([picky]), max_examples=30)
    notes = "\n".join(caught.value.__notes__)
    assert "found by check_pipeline with batch cube=Tensor[float32, (3, " in notes


def test_check_pipeline_uses_given_batches_and_only_the_given_stages():
    @node(stages="val")
    def bounded(cube: Cube) -> Tensor:
        assert cube.abs().max() < 100, "out of range"
        return cube

    large = st.builds(lambda: {"cube": torch.full((2, 2), 500.0)})
    check_pipeline(Pipeline([bounded]), stages=["train"], batches=large, max_examples=3)
    with pytest.raises(AssertionError, match="out of range"):
        check_pipeline(Pipeline([bounded]), batches={"val": large}, max_examples=3)


def test_check_pipeline_leaves_buffers_modes_grad_and_random_state_as_they_were():
    @node
    class Normed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3)

        def forward(self, cube: Annotated[Tensor, PortSpec(shape=(-1, 3))]) -> Tensor:
            return self.norm(cube) if cube.shape[0] > 1 else cube

    module = Normed()
    pipe = Pipeline([module])
    pipe.eval()
    before = module.norm.running_mean.clone()
    rng = torch.get_rng_state()
    check_pipeline(pipe, max_examples=10)
    assert torch.equal(module.norm.running_mean, before)
    assert not module.training and not module.norm.training
    assert torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng)


def test_check_pipeline_inside_given_fails_the_outer_test_with_its_error():
    @node(stages="val")
    def leaky(scores: Scores) -> Tensor:
        return scores + torch.zeros(1, requires_grad=True)

    @settings(max_examples=10, deadline=None, database=None, phases=QUICK_PHASES)
    @given(st.integers(1, 3))
    def outer(size):
        check_pipeline(Pipeline([scores, leaky]))

    with pytest.raises(PipelineCheckError) as caught:
        outer()
    assert caught.value.node == "leaky"
