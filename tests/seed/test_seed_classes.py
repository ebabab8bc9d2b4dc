"""The seed page "Execution Stages", in the cuvis.ai-compatible class form.

Each example keeps the seed's code with only the import lines changed.
Where the seed calls a helper it never defines (``self.extract_features``,
``self.random_flip``, ...), a small one is added, marked ``# helper``;
where a pipeline wires one node's output into another,
the producer declares it in ``OUTPUT_SPECS``, as real cuvis.ai nodes do.
"""

# cuvis.ai-style INPUT_SPECS / OUTPUT_SPECS are class-level dicts.
# ruff: noqa: RUF012

import logging

import pytest
import torch
import torch.nn.functional as F

from cuvis_dsl import (
    Context,
    ExecutionStage,
    LossNode,
    Metric,
    MetricNode,
    Node,
    PortSpec,
    StageSet,
)
from cuvis_dsl import Pipeline as CuvisPipeline

ALL = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
)


def ran_in(node, batch):
    """The stages in which a pipeline of this one node runs it."""
    pipeline = CuvisPipeline([node])
    return {
        stage
        for stage in ALL
        if pipeline.plan(stage, batch=batch).nodes == (node.name,)
    }


def forward(nodes, batch, stage, **context):
    pipeline = CuvisPipeline(nodes)
    return pipeline.forward(batch=batch, context=Context(stage=stage, **context))


# Stage System Overview -----------------------------------------------------


def test_overview_node_with_train_and_val_runs_only_there():
    class MyNode(Node):
        def __init__(self, **kwargs):
            super().__init__(
                execution_stages={ExecutionStage.TRAIN, ExecutionStage.VAL},
                **kwargs,
            )

        def forward(self, data, **_):  # helper
            return {"seen": data}

    assert ran_in(MyNode(), {"data": 1}) == {ExecutionStage.TRAIN, ExecutionStage.VAL}


def test_overview_nodes_default_to_always():
    class Plain(Node):
        def forward(self, data, **_):
            return {"seen": data}

    assert Plain().execution_stages == StageSet({ExecutionStage.ALWAYS})
    assert ran_in(Plain(), {"data": 1}) == set(ALL)


# The Five Execution Stages -------------------------------------------------


def test_always_feature_extractor_runs_in_every_stage():
    class FeatureExtractor(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.ALWAYS}, **kwargs)

        def forward(self, data, **_):
            # Runs during TRAIN, VAL, TEST, INFERENCE
            features = self.extract_features(data)
            return {"features": features}

        def extract_features(self, data):  # helper
            return data.mean(dim=-1)

    class MyNode(Node):
        def forward(self, data, **_):  # helper
            return {"seen": data}

    # Default behavior
    node1 = MyNode()  # Equivalent to ExecutionStage.ALWAYS

    assert node1.execution_stages == FeatureExtractor().execution_stages
    for stage in ALL:
        out = forward([FeatureExtractor()], {"data": torch.ones(2, 3)}, stage)
        assert torch.equal(out["features"], torch.ones(2))


def test_train_augmentation_runs_only_in_training():
    class TrainingAugmentation(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.TRAIN}, **kwargs)

        def forward(self, image, **_):
            # Only applies during training
            image = self.random_flip(image)
            image = self.color_jitter(image)
            return {"augmented": image}

        def random_flip(self, image):  # helper
            return image.flip(-1)

        def color_jitter(self, image):  # helper
            return image * 1.1

    image = torch.tensor([[1.0, 2.0]])
    train = forward([TrainingAugmentation()], {"image": image}, "train")

    assert torch.allclose(train["augmented"], torch.tensor([[2.2, 1.1]]))
    for stage in ("val", "test", "inference"):
        assert forward([TrainingAugmentation()], {"image": image}, stage) == {}


def test_val_metrics_report_a_metric_with_the_validation_stage():
    class ValidationMetrics(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.VAL}, **kwargs)

        def forward(self, predictions, targets, context, **_):
            accuracy = (predictions.argmax(dim=1) == targets).float().mean()
            return {
                "metrics": [
                    Metric(
                        name="val/accuracy", value=float(accuracy), stage=context.stage
                    )
                ]
            }

    batch = {
        "predictions": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
        "targets": torch.tensor([0, 1, 1]),
    }

    out = forward([ValidationMetrics()], batch, "val")

    [metric] = out["metrics"]
    assert metric.name == "val/accuracy"
    assert metric.value == pytest.approx(2 / 3)
    assert metric.stage is ExecutionStage.VAL
    assert ran_in(ValidationMetrics(), batch) == {ExecutionStage.VAL}


def test_test_evaluator_runs_only_in_testing():
    class TestEvaluator(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.TEST}, **kwargs)

        def forward(self, predictions, ground_truth, **_):
            test_results = self.compute_comprehensive_metrics(predictions, ground_truth)
            return {"test_results": test_results}

        def compute_comprehensive_metrics(self, predictions, ground_truth):  # helper
            error = predictions - ground_truth
            return {"mae": error.abs().mean().item(), "max": error.abs().max().item()}

    batch = {
        "predictions": torch.tensor([1.0, 2.0]),
        "ground_truth": torch.tensor([1.0, 4.0]),
    }

    out = forward([TestEvaluator()], batch, "test")

    assert out["test_results"] == {"mae": 1.0, "max": 2.0}
    assert ran_in(TestEvaluator(), batch) == {ExecutionStage.TEST}


def test_inference_post_processor_formats_top_five_results():
    class InferencePostProcessor(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.INFERENCE}, **kwargs)

        def forward(self, raw_output, **_):
            probabilities = torch.softmax(raw_output, dim=-1)
            top_k_probs, top_k_indices = torch.topk(probabilities, k=5, dim=-1)

            return {
                "formatted_results": {
                    "probabilities": top_k_probs.tolist(),
                    "class_indices": top_k_indices.tolist(),
                }
            }

    raw_output = torch.arange(10.0).unsqueeze(0)

    out = forward([InferencePostProcessor()], {"raw_output": raw_output}, "inference")

    results = out["formatted_results"]
    assert results["class_indices"] == [[9, 8, 7, 6, 5]]
    assert results["probabilities"][0] == sorted(results["probabilities"][0])[::-1]
    assert ran_in(InferencePostProcessor(), {"raw_output": raw_output}) == {
        ExecutionStage.INFERENCE
    }


# Stage-Aware Node Patterns -------------------------------------------------


def test_pattern_single_stage():
    class TrainOnlyAugmentation(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.TRAIN}, **kwargs)

        def forward(self, data, **_):  # helper
            return {"augmented": data + 1}

    assert TrainOnlyAugmentation().execution_stages == StageSet("train")
    assert ran_in(TrainOnlyAugmentation(), {"data": 1}) == {ExecutionStage.TRAIN}


def test_pattern_multiple_stages():
    class MetricsNode(Node):
        def __init__(self, **kwargs):
            # Execute during validation and test only
            super().__init__(
                execution_stages={ExecutionStage.VAL, ExecutionStage.TEST}, **kwargs
            )

        def forward(self, data, **_):  # helper
            return {"metrics": []}

    assert ran_in(MetricsNode(), {"data": 1}) == {
        ExecutionStage.VAL,
        ExecutionStage.TEST,
    }


def test_pattern_training_aware_loss():
    class MyLoss(LossNode):
        # Auto-configured to {TRAIN, VAL, TEST}
        def forward(self, predictions, targets, **_):
            return {"loss": self.compute_loss(predictions, targets)}

        def compute_loss(self, predictions, targets):  # helper
            return F.mse_loss(predictions, targets)

    batch = {"predictions": torch.ones(2), "targets": torch.zeros(2)}

    assert ran_in(MyLoss(), batch) == {
        ExecutionStage.TRAIN,
        ExecutionStage.VAL,
        ExecutionStage.TEST,
    }
    assert forward([MyLoss()], batch, "val")["loss"] == 1.0


def test_pattern_stage_conditional_behaviour():
    class AdaptiveNormalizer(Node):
        def __init__(self, **kwargs):
            super().__init__(
                execution_stages={ExecutionStage.TRAIN, ExecutionStage.INFERENCE},
                **kwargs,
            )
            self.register_buffer("running_mean", torch.zeros(()))  # helper

        def forward(self, data, context: Context, **_):
            if context.stage == ExecutionStage.TRAIN:
                self.update_running_stats(data)
            normalized = self.normalize(data)
            return {"normalized": normalized}

        def update_running_stats(self, data):  # helper
            self.running_mean = 0.5 * self.running_mean + 0.5 * data.mean()

        def normalize(self, data):  # helper
            return data - self.running_mean

    normalizer = AdaptiveNormalizer()
    pipeline = CuvisPipeline([normalizer])
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
    context = Context(
        stage=ExecutionStage.TRAIN,  # Current stage
        epoch=5,  # Training epoch
        batch_idx=42,  # Batch index
        global_step=1337,  # Global training step
    )

    assert context.stage is ExecutionStage.TRAIN
    assert (context.epoch, context.batch_idx, context.global_step) == (5, 42, 1337)


class ContextAwareNode(Node):
    def forward(self, data, context: Context, **_):
        if context.stage == ExecutionStage.TRAIN:
            result = self.train_transform(data)
        else:
            result = self.eval_transform(data)

        metadata = {
            "stage": context.stage.value,
            "epoch": context.epoch,
            "batch_idx": context.batch_idx,
        }

        return {"result": result, "metadata": metadata}

    def train_transform(self, data):  # helper
        return data * 2

    def eval_transform(self, data):  # helper
        return data


def test_passing_context_to_the_pipeline():
    pipeline = CuvisPipeline([ContextAwareNode()])
    train_batch = val_batch = inference_batch = {"data": torch.ones(1)}

    # Training
    train_context = Context(stage=ExecutionStage.TRAIN, epoch=0, batch_idx=0)
    train_outputs = pipeline.forward(batch=train_batch, context=train_context)

    # Validation
    val_context = Context(stage=ExecutionStage.VAL, epoch=0, batch_idx=0)
    val_outputs = pipeline.forward(batch=val_batch, context=val_context)

    # Inference
    inference_context = Context(stage=ExecutionStage.INFERENCE)
    inference_outputs = pipeline.forward(
        batch=inference_batch, context=inference_context
    )

    assert train_outputs["metadata"]["stage"] == "train"
    assert val_outputs["metadata"]["stage"] == "val"
    assert inference_outputs["metadata"]["stage"] == "inference"


def test_using_context_in_nodes():
    out = forward([ContextAwareNode()], {"data": torch.ones(1)}, "train", epoch=3)
    val = forward([ContextAwareNode()], {"data": torch.ones(1)}, "val", batch_idx=7)

    assert torch.equal(out["result"], torch.full((1,), 2.0))
    assert out["metadata"] == {"stage": "train", "epoch": 3, "batch_idx": 0}
    assert torch.equal(val["result"], torch.ones(1))
    assert val["metadata"] == {"stage": "val", "epoch": 0, "batch_idx": 7}


# Data Flow Patterns --------------------------------------------------------


class BCELoss(LossNode):
    # Auto-configured {TRAIN, VAL, TEST}
    def forward(self, predictions, targets, **_):
        return {"loss": F.binary_cross_entropy(predictions, targets)}


class AccuracyMetric(Node):
    def __init__(self, **kwargs):
        super().__init__(
            execution_stages={ExecutionStage.VAL, ExecutionStage.TEST}, **kwargs
        )

    def forward(self, predictions, targets, context, **_):
        accuracy = (predictions.round() == targets).float().mean()
        return {
            "metrics": [
                Metric(name="accuracy", value=float(accuracy), stage=context.stage)
            ]
        }


def test_losses_compute_in_train_val_test_and_metrics_only_in_val_test():
    batch = {
        "predictions": torch.tensor([0.9, 0.2, 0.4, 0.7]),
        "targets": torch.tensor([1.0, 0.0, 1.0, 1.0]),
    }
    expected = F.binary_cross_entropy(batch["predictions"], batch["targets"])

    outputs = {
        stage: forward([BCELoss(), AccuracyMetric()], batch, stage) for stage in ALL
    }

    assert set(outputs[ExecutionStage.TRAIN]) == {"loss"}
    assert set(outputs[ExecutionStage.VAL]) == {"loss", "metrics"}
    assert set(outputs[ExecutionStage.TEST]) == {"loss", "metrics"}
    assert outputs[ExecutionStage.INFERENCE] == {}
    assert torch.equal(outputs[ExecutionStage.VAL]["loss"], expected)
    [metric] = outputs[ExecutionStage.TEST]["metrics"]
    assert (metric.name, metric.value, metric.stage) == (
        "accuracy",
        0.75,
        ExecutionStage.TEST,
    )


class DataInput(Node):
    OUTPUT_SPECS = {"data": PortSpec(dtype=torch.float32)}

    def forward(self, raw, **_):
        return {"data": raw.float()}


class Augmentation(Node):
    """Rebinds ``data`` in TRAIN; the other stages see the original."""

    INPUT_SPECS = {"data": PortSpec(dtype=torch.float32)}
    OUTPUT_SPECS = {"data": PortSpec(dtype=torch.float32)}

    def __init__(self, **kwargs):
        super().__init__(execution_stages={ExecutionStage.TRAIN}, **kwargs)

    def forward(self, data, **_):
        return {"data": data + 10}


class FeatureExtraction(Node):
    OUTPUT_SPECS = {"features": PortSpec(dtype=torch.float32)}

    def forward(self, data, **_):
        return {"features": data.mean(dim=-1)}


class Model(Node):
    OUTPUT_SPECS = {"predictions": PortSpec(dtype=torch.float32)}

    def forward(self, features, **_):
        return {"predictions": torch.sigmoid(features)}


class InferenceOptimizer(Node):
    def __init__(self, **kwargs):
        super().__init__(execution_stages={ExecutionStage.INFERENCE}, **kwargs)

    def forward(self, predictions, **_):
        return {"decisions": predictions > 0.5}


def paths_pipeline():
    return CuvisPipeline(
        [
            DataInput(),
            Augmentation(),
            FeatureExtraction(),
            Model(),
            BCELoss(),
            AccuracyMetric(),
            InferenceOptimizer(),
        ]
    )


def test_training_and_inference_paths_run_the_nodes_of_their_stage():
    pipeline = paths_pipeline()
    batch = {"raw": torch.zeros(2, 3), "targets": torch.ones(2)}

    runs = {stage: set(pipeline.plan(stage, batch=batch).nodes) for stage in ALL}

    core = {"data_input", "feature_extraction", "model"}
    assert runs[ExecutionStage.TRAIN] == core | {"augmentation", "bce_loss"}
    assert runs[ExecutionStage.VAL] == core | {"bce_loss", "accuracy_metric"}
    assert runs[ExecutionStage.TEST] == core | {"bce_loss", "accuracy_metric"}
    assert runs[ExecutionStage.INFERENCE] == core | {"inference_optimizer"}


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
    # GOOD: Loss computes during training phases
    class TrainingLoss(LossNode):
        pass  # Automatically {TRAIN, VAL, TEST}

    # BAD: Loss executing during inference
    class BadLoss(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.ALWAYS}, **kwargs)

        def forward(self, predictions, targets, **_):  # helper
            return {"loss": F.mse_loss(predictions, targets)}

    class GoodLoss(TrainingLoss):
        def forward(self, predictions, targets, **_):  # helper
            return {"loss": F.mse_loss(predictions, targets)}

    assert ExecutionStage.INFERENCE not in TrainingLoss().execution_stages
    inference_batch = {"predictions": torch.ones(2)}
    assert forward([GoodLoss()], inference_batch, "inference") == {}
    with pytest.raises(ValueError, match="'targets'"):
        forward([BadLoss()], inference_batch, "inference")


def test_default_to_always_for_core_nodes():
    # GOOD: Applies everywhere
    class FeatureExtractor(Node):
        pass  # Defaults to ALWAYS

    # BAD: Unnecessary restriction
    class OverRestricted(Node):
        def __init__(self, **kwargs):
            super().__init__(
                execution_stages={ExecutionStage.TRAIN, ExecutionStage.INFERENCE},
                **kwargs,
            )

        def forward(self, data, **_):  # helper
            return {"features": data}

    assert FeatureExtractor().execution_stages == StageSet(ExecutionStage.ALWAYS)
    assert ran_in(OverRestricted(), {"data": 1}) == {
        ExecutionStage.TRAIN,
        ExecutionStage.INFERENCE,
    }


def test_separate_concerns_with_multiple_nodes():
    # GOOD: Separate nodes for different behaviors
    class TrainingPostProcessor(Node):
        OUTPUT_SPECS = {"processed": PortSpec()}  # helper

        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.TRAIN}, **kwargs)

        def forward(self, data, **_):  # helper
            return {"processed": data + 1}

    class InferencePostProcessor(Node):
        OUTPUT_SPECS = {"processed": PortSpec()}  # helper

        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.INFERENCE}, **kwargs)

        def forward(self, data, **_):  # helper
            return {"processed": data - 1}

    nodes = [TrainingPostProcessor(), InferencePostProcessor()]

    assert forward(nodes, {"data": 5}, "train") == {"processed": 6}
    assert forward(nodes, {"data": 5}, "inference") == {"processed": 4}
    assert forward(nodes, {"data": 5}, "val") == {}


def test_documented_stage_decisions_match_the_node():
    class ValidationOnlyMetric(Node):
        """Compute expensive metric only during validation.

        This metric requires full dataset aggregation and is too expensive
        during training. Computed during validation for model selection.

        Execution Stages: VAL, TEST
        """

        def __init__(self, **kwargs):
            super().__init__(
                execution_stages={ExecutionStage.VAL, ExecutionStage.TEST}, **kwargs
            )

    documented = ValidationOnlyMetric.__doc__.split("Execution Stages:")[1]
    stages = {ExecutionStage[name.strip()] for name in documented.split(",")}

    assert ValidationOnlyMetric().execution_stages == stages


class Predictor(Node):
    OUTPUT_SPECS = {"scores": PortSpec(dtype=torch.float32)}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, data, **_):
        return {"scores": torch.sigmoid(self.linear(data)).squeeze(-1)}


class ScoreLoss(LossNode):
    def forward(self, scores, targets, **_):
        return {"loss": F.binary_cross_entropy(scores, targets)}


class ScoreMetric(MetricNode):
    def forward(self, scores, targets, context, **_):
        accuracy = (scores.round() == targets).float().mean()
        return {"metrics": [Metric("accuracy", accuracy, context.stage)]}


class Predictions(Node):
    def __init__(self, **kwargs):
        super().__init__(execution_stages={ExecutionStage.INFERENCE}, **kwargs)

    def forward(self, scores, **_):
        return {"predictions": scores > 0.5}


@pytest.fixture
def pipeline():
    torch.manual_seed(0)
    return CuvisPipeline([Predictor(), ScoreLoss(), ScoreMetric(), Predictions()])


@pytest.fixture
def sample_batch():
    return {"data": torch.randn(4, 3), "targets": torch.tensor([0.0, 1.0, 1.0, 0.0])}


def test_pipeline_all_stages(pipeline, sample_batch):
    """Verify pipeline behavior in all stages."""
    stages = [
        ExecutionStage.TRAIN,
        ExecutionStage.VAL,
        ExecutionStage.TEST,
        ExecutionStage.INFERENCE,
    ]

    for stage in stages:
        context = Context(stage=stage, epoch=0, batch_idx=0)
        outputs = pipeline.forward(batch=sample_batch, context=context)

        if stage == ExecutionStage.TRAIN:
            assert "loss" in outputs
        if stage in {ExecutionStage.VAL, ExecutionStage.TEST}:
            assert "metrics" in outputs
        if stage == ExecutionStage.INFERENCE:
            assert "predictions" in outputs


def test_all_stages_produce_nothing_outside_their_stage(pipeline, sample_batch):
    outputs = {
        stage: pipeline.forward(batch=sample_batch, context=Context(stage=stage))
        for stage in ALL
    }

    assert set(outputs[ExecutionStage.TRAIN]) == {"scores", "loss"}
    assert set(outputs[ExecutionStage.VAL]) == {"scores", "loss", "metrics"}
    assert set(outputs[ExecutionStage.TEST]) == {"scores", "loss", "metrics"}
    assert set(outputs[ExecutionStage.INFERENCE]) == {"scores", "predictions"}


# Troubleshooting -----------------------------------------------------------


class MyNode(Node):
    def forward(self, data, **_):  # helper
        return {"output": data}


def test_node_not_executing_diagnosis_and_fix(caplog):
    logger = logging.getLogger("seed")
    # Node restricted to TRAIN
    node = MyNode(execution_stages={ExecutionStage.TRAIN})

    # But running VAL - won't execute!
    context = Context(stage=ExecutionStage.VAL)

    with caplog.at_level(logging.DEBUG):
        logger.info(f"Node {node.name} stages: {node.execution_stages}")
        logger.info(f"Current stage: {context.stage}")
        assert CuvisPipeline([node]).forward(batch={"data": 1}, context=context) == {}

    assert "Node my_node stages: TRAIN" in caplog.text
    assert "Current stage: VAL" in caplog.text
    assert "skipped: my_node (runs in TRAIN, not VAL)" in caplog.text

    # Fix: Add VAL to stages
    node = MyNode(execution_stages={ExecutionStage.TRAIN, ExecutionStage.VAL})
    assert CuvisPipeline([node]).forward(batch={"data": 1}, context=context) == {
        "output": 1
    }


def test_unexpected_node_execution_parent_constructor_keeps_stages():
    class MyMetric(MetricNode):  # Parent sets VAL/TEST
        def __init__(self, **kwargs):
            super().__init__(**kwargs)  # Call parent to preserve stages
            self.threshold = 0.5

        def forward(self, scores, **_):  # helper
            return {"hits": int((scores > self.threshold).sum())}

    batch = {"scores": torch.tensor([0.2, 0.7])}

    assert forward([MyMetric()], batch, "train") == {}
    assert forward([MyMetric()], batch, "val") == {"hits": 1}


def test_loss_computes_in_validation_with_loss_node():
    class MyLoss(LossNode):
        # Auto-configured {TRAIN, VAL, TEST}
        def forward(self, predictions, targets, **_):
            return {"loss": self.compute_loss(predictions, targets)}

        def compute_loss(self, predictions, targets):  # helper
            return (predictions - targets).abs().mean()

    batch = {"predictions": torch.ones(2), "targets": torch.zeros(2)}

    assert forward([MyLoss()], batch, "val")["loss"] == 1.0


def test_context_available_when_declared_in_input_specs():
    class MyNode(Node):
        INPUT_SPECS = {
            "data": PortSpec(dtype=torch.float32, shape=(-1, -1)),
            "context": PortSpec(dtype=Context, shape=()),  # Add this
        }

        def forward(self, data, context: Context, **_):
            if context.stage == ExecutionStage.TRAIN:
                return {"output": self.train_process(data)}
            return {"output": self.eval_process(data)}

        def train_process(self, data):  # helper
            return data * 2

        def eval_process(self, data):  # helper
            return data

    data = torch.ones(1, 2)

    assert torch.equal(forward([MyNode()], {"data": data}, "train")["output"], 2 * data)
    assert torch.equal(forward([MyNode()], {"data": data}, "val")["output"], data)
    assert [port.name for port in MyNode().node_spec().inputs] == ["data"]


def test_stage_comparison_with_the_enum_and_its_value():
    context = Context(stage=ExecutionStage.TRAIN)

    # GOOD
    assert context.stage == ExecutionStage.TRAIN
    # ALSO GOOD
    assert context.stage.value == "train"
    # The seed's BAD case matches here too: ExecutionStage is a str enum.
    assert context.stage == "train"
    assert context.stage != "val"


# Optimization Tips ---------------------------------------------------------


def test_minimize_overhead_in_high_frequency_stages():
    renders = []

    # BAD: Expensive visualization in training
    class BadVisualizer(Node):
        def __init__(self, **kwargs):
            super().__init__(execution_stages={ExecutionStage.ALWAYS}, **kwargs)

        def forward(self, data, **_):
            expensive_viz = self.render_3d_plot(data)  # Runs every batch!
            return {"visualization": expensive_viz}

        def render_3d_plot(self, data):  # helper
            renders.append(type(self).__name__)
            return data

    # GOOD: Visualization only during validation
    class GoodVisualizer(Node):
        def __init__(self, **kwargs):
            super().__init__(
                execution_stages={ExecutionStage.VAL, ExecutionStage.TEST},
                **kwargs,
            )

        def forward(self, data, **_):  # helper
            return {"visualization": self.render_3d_plot(data)}

        def render_3d_plot(self, data):  # helper
            renders.append(type(self).__name__)
            return data

    for _ in range(3):
        forward([BadVisualizer()], {"data": 1}, "train")
        forward([GoodVisualizer()], {"data": 1}, "train")
    forward([GoodVisualizer()], {"data": 1}, "val")

    assert renders == ["BadVisualizer"] * 3 + ["GoodVisualizer"]


def test_reduce_complexity_in_inference():
    class AdaptiveProcessor(Node):
        def forward(self, data, context: Context, **_):
            if context.stage == ExecutionStage.INFERENCE:
                return {"result": self.fast_forward(data)}
            else:
                return {"result": self.full_forward(data)}

        def fast_forward(self, data):  # helper
            return "fast"

        def full_forward(self, data):  # helper
            return "full"

    assert forward([AdaptiveProcessor()], {"data": 1}, "inference") == {
        "result": "fast"
    }
    for stage in ("train", "val", "test"):
        assert forward([AdaptiveProcessor()], {"data": 1}, stage) == {"result": "full"}


def test_skip_gradients_in_non_training(pipeline, sample_batch):
    val_batch = sample_batch
    val_context = Context(stage=ExecutionStage.VAL)

    # Automatically handled by trainer
    with torch.no_grad():
        outputs = pipeline.forward(batch=val_batch, context=val_context)

    assert not outputs["scores"].requires_grad
    assert not outputs["loss"].requires_grad
    assert torch.is_grad_enabled()
    with_grad = pipeline.forward(batch=val_batch, context=val_context)
    assert with_grad["loss"].requires_grad
