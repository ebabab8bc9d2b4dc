"""The seed page "Execution Stages", in the decorator form.

Every example of the page, written as decorated functions (or, where a
node keeps state, a decorated ``nn.Module``): the function's signature is
its port spec, its ``stages=`` its execution stages, and no output needs a
separate declaration to be wired.
"""

from __future__ import annotations

import logging
from typing import Annotated, TypedDict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cuvis_dsl import (
    Context,
    ExecutionStage,
    Metric,
    Pipeline,
    PortSpec,
    StageSet,
    loss,
    metric,
    node,
)

TRAIN, VAL, TEST, INFERENCE = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
)
ALL = (TRAIN, VAL, TEST, INFERENCE)


def ran_in(item, batch) -> set[ExecutionStage]:
    """The stages in which a pipeline of this one node runs it."""
    pipeline = Pipeline([item])
    name = next(iter(pipeline.specs))
    return {s for s in ALL if pipeline.plan(s, batch=batch).nodes == (name,)}


def forward(nodes, batch, stage, **context):
    pipeline = Pipeline(nodes)
    return pipeline.forward(batch=batch, context=Context(stage=stage, **context))


# Stage System Overview -----------------------------------------------------


def test_overview_node_with_train_and_val_runs_only_there():
    @node(stages={TRAIN, VAL})
    def my_node(data: Tensor) -> Tensor:
        return data

    assert ran_in(my_node, {"data": 1}) == {TRAIN, VAL}


def test_overview_nodes_default_to_always():
    @node
    def plain(data: Tensor) -> Tensor:
        return data

    assert plain.stages == StageSet({ExecutionStage.ALWAYS})
    assert ran_in(plain, {"data": 1}) == set(ALL)


# The Five Execution Stages -------------------------------------------------


def test_always_feature_extractor_runs_in_every_stage():
    @node(stages=ExecutionStage.ALWAYS)
    def features(data: Tensor) -> Tensor:
        # Runs during TRAIN, VAL, TEST, INFERENCE
        return data.mean(dim=-1)

    @node
    def default(data: Tensor) -> Tensor:  # Equivalent to ExecutionStage.ALWAYS
        return data

    assert default.stages == features.stages
    for stage in ALL:
        out = forward([features], {"data": torch.ones(2, 3)}, stage)
        assert torch.equal(out["features"], torch.ones(2))


def test_train_augmentation_runs_only_in_training():
    @node(stages=TRAIN)
    def augmented(image: Tensor) -> Tensor:
        # Only applies during training
        return image.flip(-1) * 1.1

    image = torch.tensor([[1.0, 2.0]])

    train = forward([augmented], {"image": image}, "train")

    assert torch.allclose(train["augmented"], torch.tensor([[2.2, 1.1]]))
    for stage in ("val", "test", "inference"):
        assert forward([augmented], {"image": image}, stage) == {}


def test_val_metrics_report_a_metric_with_the_validation_stage():
    @node(stages=VAL)
    def metrics(predictions: Tensor, targets: Tensor, context: Context) -> list:
        accuracy = (predictions.argmax(dim=1) == targets).float().mean()
        return [Metric(name="val/accuracy", value=float(accuracy), stage=context.stage)]

    batch = {
        "predictions": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
        "targets": torch.tensor([0, 1, 1]),
    }

    [reported] = forward([metrics], batch, "val")["metrics"]

    assert reported.name == "val/accuracy"
    assert reported.value == pytest.approx(2 / 3)
    assert reported.stage is VAL
    assert ran_in(metrics, batch) == {VAL}


def test_test_evaluator_runs_only_in_testing():
    @node(stages=TEST)
    def test_results(predictions: Tensor, ground_truth: Tensor) -> dict:
        error = (predictions - ground_truth).abs()
        return {"mae": error.mean().item(), "max": error.max().item()}

    batch = {
        "predictions": torch.tensor([1.0, 2.0]),
        "ground_truth": torch.tensor([1.0, 4.0]),
    }

    out = forward([test_results], batch, "test")

    assert out["test_results"] == {"mae": 1.0, "max": 2.0}
    assert ran_in(test_results, batch) == {TEST}


def test_inference_post_processor_formats_top_five_results():
    @node(stages=INFERENCE)
    def formatted_results(raw_output: Tensor) -> dict:
        probabilities = torch.softmax(raw_output, dim=-1)
        top_k_probs, top_k_indices = torch.topk(probabilities, k=5, dim=-1)
        return {
            "probabilities": top_k_probs.tolist(),
            "class_indices": top_k_indices.tolist(),
        }

    raw_output = torch.arange(10.0).unsqueeze(0)

    out = forward([formatted_results], {"raw_output": raw_output}, "inference")

    results = out["formatted_results"]
    assert results["class_indices"] == [[9, 8, 7, 6, 5]]
    assert results["probabilities"][0] == sorted(results["probabilities"][0])[::-1]
    assert ran_in(formatted_results, {"raw_output": raw_output}) == {INFERENCE}


# Stage-Aware Node Patterns -------------------------------------------------


def test_pattern_single_stage():
    @node(stages=TRAIN)
    def train_only_augmentation(data: Tensor) -> Tensor:
        return data + 1

    assert train_only_augmentation.stages == StageSet("train")
    assert ran_in(train_only_augmentation, {"data": 1}) == {TRAIN}


def test_pattern_multiple_stages():
    @node(stages=VAL | TEST)  # Execute during validation and test only
    def metrics(data: Tensor) -> list:
        return []

    assert ran_in(metrics, {"data": 1}) == {VAL, TEST}


def test_pattern_training_aware_loss():
    @loss  # Auto-configured to {TRAIN, VAL, TEST}
    def my_loss(predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(predictions, targets)

    batch = {"predictions": torch.ones(2), "targets": torch.zeros(2)}

    assert ran_in(my_loss, batch) == {TRAIN, VAL, TEST}
    assert forward([my_loss], batch, "val")["my_loss"] == 1.0


def test_pattern_stage_conditional_behaviour():
    @node(stages=TRAIN | INFERENCE, outputs="normalized")
    class AdaptiveNormalizer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(()))

        def forward(self, data: Tensor, context: Context) -> Tensor:
            if context.stage == TRAIN:
                self.running_mean = 0.5 * self.running_mean + 0.5 * data.mean()
            return data - self.running_mean

    normalizer = AdaptiveNormalizer()
    pipeline = Pipeline([normalizer])
    batch = {"data": torch.full((2,), 4.0)}

    train = pipeline.forward(batch=batch, context=Context(stage="train"))
    inference = pipeline.forward(batch=batch, context=Context(stage="inference"))
    val = pipeline.forward(batch=batch, context=Context(stage="val"))

    assert torch.equal(train["normalized"], torch.full((2,), 2.0))
    assert torch.equal(inference["normalized"], torch.full((2,), 2.0))
    assert normalizer.running_mean.item() == 2.0
    assert val == {}


# Pipeline Execution with Context -------------------------------------------


def test_context_object_carries_stage_and_counters():
    context = Context(stage=TRAIN, epoch=5, batch_idx=42, global_step=1337)

    assert context.stage is TRAIN
    assert (context.epoch, context.batch_idx, context.global_step) == (5, 42, 1337)


class Tagged(TypedDict):
    result: Tensor
    metadata: dict


@node
def context_aware(data: Tensor, context: Context) -> Tagged:
    result = data * 2 if context.stage == TRAIN else data
    metadata = {
        "stage": context.stage.value,
        "epoch": context.epoch,
        "batch_idx": context.batch_idx,
    }
    return {"result": result, "metadata": metadata}


def test_passing_context_to_the_pipeline():
    pipeline = Pipeline([context_aware])
    batch = {"data": torch.ones(1)}

    train_outputs = pipeline.forward(
        batch=batch, context=Context(stage=TRAIN, epoch=0, batch_idx=0)
    )
    val_outputs = pipeline.forward(
        batch=batch, context=Context(stage=VAL, epoch=0, batch_idx=0)
    )
    inference_outputs = pipeline.forward(batch=batch, context=Context(stage=INFERENCE))

    assert train_outputs["metadata"]["stage"] == "train"
    assert val_outputs["metadata"]["stage"] == "val"
    assert inference_outputs["metadata"]["stage"] == "inference"


def test_using_context_in_nodes():
    out = forward([context_aware], {"data": torch.ones(1)}, "train", epoch=3)
    val = forward([context_aware], {"data": torch.ones(1)}, "val", batch_idx=7)

    assert torch.equal(out["result"], torch.full((1,), 2.0))
    assert out["metadata"] == {"stage": "train", "epoch": 3, "batch_idx": 0}
    assert torch.equal(val["result"], torch.ones(1))
    assert val["metadata"] == {"stage": "val", "epoch": 0, "batch_idx": 7}


# Data Flow Patterns --------------------------------------------------------


@loss  # Auto-configured {TRAIN, VAL, TEST}
def bce(predictions: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy(predictions, targets)


@metric  # VAL, TEST
def accuracy(predictions: Tensor, targets: Tensor, context: Context) -> list:
    value = (predictions.round() == targets).float().mean()
    return [Metric(name="accuracy", value=float(value), stage=context.stage)]


def test_losses_compute_in_train_val_test_and_metrics_only_in_val_test():
    batch = {
        "predictions": torch.tensor([0.9, 0.2, 0.4, 0.7]),
        "targets": torch.tensor([1.0, 0.0, 1.0, 1.0]),
    }
    expected = F.binary_cross_entropy(batch["predictions"], batch["targets"])

    outputs = {stage: forward([bce, accuracy], batch, stage) for stage in ALL}

    assert set(outputs[TRAIN]) == {"bce"}
    assert set(outputs[VAL]) == {"bce", "accuracy"}
    assert set(outputs[TEST]) == {"bce", "accuracy"}
    assert outputs[INFERENCE] == {}
    assert torch.equal(outputs[VAL]["bce"], expected)
    [reported] = outputs[TEST]["accuracy"]
    assert (reported.name, reported.value, reported.stage) == ("accuracy", 0.75, TEST)


Float = Annotated[Tensor, PortSpec(dtype=torch.float32)]


@node(outputs="data")
def data_input(raw: Tensor) -> Float:
    return raw.float()


@node(stages=TRAIN, outputs="data")  # rebinds data in TRAIN
def augmentation(data: Float) -> Float:
    return data + 10


@node(outputs="features")
def feature_extraction(data: Float) -> Float:
    return data.mean(dim=-1)


@node(outputs="predictions")
def model(features: Float) -> Float:
    return torch.sigmoid(features)


@node(stages=INFERENCE, outputs="decisions")
def inference_optimizer(predictions: Float) -> Tensor:
    return predictions > 0.5


def paths_pipeline() -> Pipeline:
    return Pipeline(
        [
            data_input,
            augmentation,
            feature_extraction,
            model,
            bce,
            accuracy,
            inference_optimizer,
        ]
    )


def test_training_and_inference_paths_run_the_nodes_of_their_stage():
    pipeline = paths_pipeline()
    batch = {"raw": torch.zeros(2, 3), "targets": torch.ones(2)}

    runs = {stage: set(pipeline.plan(stage, batch=batch).nodes) for stage in ALL}

    core = {"data_input", "feature_extraction", "model"}
    assert runs[TRAIN] == core | {"augmentation", "bce"}
    assert runs[VAL] == core | {"bce", "accuracy"}
    assert runs[TEST] == core | {"bce", "accuracy"}
    assert runs[INFERENCE] == core | {"inference_optimizer"}


def test_feature_extraction_sees_augmented_data_only_in_training():
    pipeline = paths_pipeline()
    batch = {"raw": torch.zeros(2, 3), "targets": torch.ones(2)}

    train = pipeline.forward(batch=batch, context=Context(stage="train"))
    val = pipeline.forward(batch=batch, context=Context(stage="val"))
    inference = pipeline.forward(
        batch={"raw": torch.zeros(2, 3)}, context=Context(stage="inference")
    )

    assert torch.equal(train["features"], torch.full((2,), 10.0))
    assert torch.equal(val["features"], torch.zeros(2))
    assert torch.equal(inference["decisions"], torch.tensor([False, False]))
    assert "augmentation" in pipeline.explain("feature_extraction", "train")
    assert "does not run in VAL" in pipeline.explain("augmentation", "val")


# Best Practices ------------------------------------------------------------


def test_semantic_stage_selection():
    @loss  # GOOD: automatically {TRAIN, VAL, TEST}
    def training_loss(predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(predictions, targets)

    @node(stages=ExecutionStage.ALWAYS)  # BAD: loss executing during inference
    def bad_loss(predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(predictions, targets)

    inference_batch = {"predictions": torch.ones(2)}

    assert INFERENCE not in training_loss.stages
    assert forward([training_loss], inference_batch, "inference") == {}
    with pytest.raises(ValueError, match="'targets'"):
        forward([bad_loss], inference_batch, "inference")


def test_default_to_always_for_core_nodes():
    @node  # GOOD: applies everywhere
    def features(data: Tensor) -> Tensor:
        return data

    @node(stages=TRAIN | INFERENCE)  # BAD: unnecessary restriction
    def over_restricted(data: Tensor) -> Tensor:
        return data

    assert features.stages == StageSet(ExecutionStage.ALWAYS)
    assert ran_in(over_restricted, {"data": 1}) == {TRAIN, INFERENCE}


def test_separate_concerns_with_multiple_nodes():
    @node(stages=TRAIN, outputs="processed")
    def training_post_processor(data: int) -> int:
        return data + 1

    @node(stages=INFERENCE, outputs="processed")
    def inference_post_processor(data: int) -> int:
        return data - 1

    nodes = [training_post_processor, inference_post_processor]

    assert forward(nodes, {"data": 5}, "train") == {"processed": 6}
    assert forward(nodes, {"data": 5}, "inference") == {"processed": 4}
    assert forward(nodes, {"data": 5}, "val") == {}


def test_documented_stage_decisions_match_the_node():
    @metric
    def validation_only_metric(scores: Tensor) -> Tensor:
        """Compute expensive metric only during validation.

        This metric requires full dataset aggregation and is too expensive
        during training. Computed during validation for model selection.

        Execution Stages: VAL, TEST
        """
        return scores.mean()

    documented = validation_only_metric.__doc__.split("Execution Stages:")[1]
    stages = {ExecutionStage[name.strip()] for name in documented.split(",")}

    assert validation_only_metric.stages == stages


@node(outputs="scores")
class Predictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, data: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(data)).squeeze(-1)


@loss(outputs="loss")
def score_loss(scores: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy(scores, targets)


@metric(outputs="metrics")
def score_metric(scores: Tensor, targets: Tensor, context: Context) -> list:
    value = (scores.round() == targets).float().mean()
    return [Metric("accuracy", value, context.stage)]


@node(stages=INFERENCE)
def predictions(scores: Tensor) -> Tensor:
    return scores > 0.5


@pytest.fixture
def pipeline():
    torch.manual_seed(0)
    return Pipeline([Predictor(), score_loss, score_metric, predictions])


@pytest.fixture
def sample_batch():
    return {"data": torch.randn(4, 3), "targets": torch.tensor([0.0, 1.0, 1.0, 0.0])}


def test_pipeline_all_stages(pipeline, sample_batch):
    """Verify pipeline behavior in all stages."""
    for stage in [TRAIN, VAL, TEST, INFERENCE]:
        context = Context(stage=stage, epoch=0, batch_idx=0)
        outputs = pipeline.forward(batch=sample_batch, context=context)

        if stage == TRAIN:
            assert "loss" in outputs
        if stage in {VAL, TEST}:
            assert "metrics" in outputs
        if stage == INFERENCE:
            assert "predictions" in outputs


def test_all_stages_produce_nothing_outside_their_stage(pipeline, sample_batch):
    outputs = {
        stage: pipeline.forward(batch=sample_batch, context=Context(stage=stage))
        for stage in ALL
    }

    assert set(outputs[TRAIN]) == {"scores", "loss"}
    assert set(outputs[VAL]) == {"scores", "loss", "metrics"}
    assert set(outputs[TEST]) == {"scores", "loss", "metrics"}
    assert set(outputs[INFERENCE]) == {"scores", "predictions"}


# Troubleshooting -----------------------------------------------------------


def test_node_not_executing_diagnosis_and_fix(caplog):
    logger = logging.getLogger("seed")

    @node(stages=TRAIN)  # restricted to TRAIN
    def my_node(data: int) -> int:
        return data

    context = Context(stage=VAL)  # but running VAL: won't execute

    with caplog.at_level(logging.DEBUG):
        logger.info(f"Node {my_node.name} stages: {my_node.stages}")
        logger.info(f"Current stage: {context.stage}")
        assert Pipeline([my_node]).forward(batch={"data": 1}, context=context) == {}

    assert "Node my_node stages: TRAIN" in caplog.text
    assert "Current stage: VAL" in caplog.text
    assert "skipped: my_node (runs in TRAIN, not VAL)" in caplog.text
    explained = Pipeline([my_node]).explain("my_node", VAL)
    assert "does not run in VAL: its stages are TRAIN" in explained

    fixed = node(my_node, stages={TRAIN, VAL})  # Fix: add VAL to stages
    assert Pipeline([fixed]).forward(batch={"data": 1}, context=context) == {
        "my_node": 1
    }


def test_unexpected_node_execution_metric_keeps_its_default_stages():
    threshold = 0.5

    @metric  # VAL/TEST, also when renamed or given other outputs
    def my_metric(scores: Tensor) -> int:
        return int((scores > threshold).sum())

    renamed = node(my_metric, name="hits")
    batch = {"scores": torch.tensor([0.2, 0.7])}

    assert renamed.stages == StageSet("val|test")
    assert forward([renamed], batch, "train") == {}
    assert forward([renamed], batch, "val") == {"hits": 1}


def test_loss_computes_in_validation_with_the_loss_decorator():
    @loss  # Auto-configured {TRAIN, VAL, TEST}
    def my_loss(predictions: Tensor, targets: Tensor) -> Tensor:
        return (predictions - targets).abs().mean()

    batch = {"predictions": torch.ones(2), "targets": torch.zeros(2)}

    assert forward([my_loss], batch, "val")["my_loss"] == 1.0


def test_context_available_by_asking_for_it():
    @node(outputs="output")
    def my_node(
        data: Annotated[Tensor, PortSpec(dtype=torch.float32, shape=(-1, -1))],
        context: Context,
    ) -> Tensor:
        if context.stage == TRAIN:
            return data * 2
        return data

    data = torch.ones(1, 2)

    assert torch.equal(forward([my_node], {"data": data}, "train")["output"], 2 * data)
    assert torch.equal(forward([my_node], {"data": data}, "val")["output"], data)
    assert [port.name for port in my_node.spec.inputs] == ["data"]


def test_stage_comparison_with_the_enum_and_its_value():
    context = Context(stage=TRAIN)

    assert context.stage == ExecutionStage.TRAIN  # GOOD
    assert context.stage.value == "train"  # ALSO GOOD
    # The seed's BAD case matches here too: ExecutionStage is a str enum.
    assert context.stage == "train"
    assert context.stage != "val"


# Optimization Tips ---------------------------------------------------------


def test_minimize_overhead_in_high_frequency_stages():
    renders = []

    @node(stages=ExecutionStage.ALWAYS)  # BAD: runs every batch
    def bad_visualization(data: int) -> int:
        renders.append("bad")
        return data

    @node(stages=VAL | TEST)  # GOOD: only during validation and test
    def good_visualization(data: int) -> int:
        renders.append("good")
        return data

    for _ in range(3):
        forward([bad_visualization, good_visualization], {"data": 1}, "train")
    forward([good_visualization], {"data": 1}, "val")

    assert renders == ["bad"] * 3 + ["good"]


def test_reduce_complexity_in_inference():
    @node
    def result(data: int, context: Context) -> str:
        if context.stage == INFERENCE:
            return "fast"
        return "full"

    assert forward([result], {"data": 1}, "inference") == {"result": "fast"}
    for stage in ("train", "val", "test"):
        assert forward([result], {"data": 1}, stage) == {"result": "full"}


def test_skip_gradients_in_non_training(pipeline, sample_batch):
    val_context = Context(stage=VAL)

    with torch.no_grad():  # what the trainer does outside TRAIN
        outputs = pipeline.forward(batch=sample_batch, context=val_context)

    assert not outputs["scores"].requires_grad
    assert not outputs["loss"].requires_grad
    assert torch.is_grad_enabled()
    with_grad = pipeline.forward(batch=sample_batch, context=val_context)
    assert with_grad["loss"].requires_grad
