"""The Trainer: two phases, contexts, losses, metrics, callbacks, logging."""

from __future__ import annotations

import io
import logging
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cuvis_dsl import (
    BestCheckpoint,
    Callback,
    Context,
    CuvisDSLWarning,
    EarlyStopping,
    ExecutionStage,
    LossNode,
    Metric,
    MissingInputError,
    Node,
    NonFiniteLossError,
    Pipeline,
    PortSpec,
    Trainer,
    loss,
    metric,
    node,
)

CONTEXTS: list[Context] = []
GRAD: list[tuple[str, bool]] = []


@node(outputs="pred")
class Scale(nn.Module):
    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(start))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x


@loss
def mse(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


@loss
def l1(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).abs().mean()


@metric
def mae(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).abs().mean()


@node(stages="train|val|test|inference", outputs="seen")
def record(pred: Tensor, context: Context) -> Tensor:
    CONTEXTS.append(context)
    GRAD.append((context.stage.value, torch.is_grad_enabled()))
    return torch.is_grad_enabled() * torch.ones(())


def data(count: int = 3, size: int = 4) -> list[dict[str, Tensor]]:
    return [
        {
            "x": torch.full((size,), float(i + 1)),
            "y": torch.full((size,), 2.0 * (i + 1)),
        }
        for i in range(count)
    ]


def sgd(lr: float = 0.01):
    return lambda params: torch.optim.SGD(params, lr=lr)


def make(nodes=None, **options) -> Trainer:
    pipe = Pipeline(nodes if nodes is not None else [Scale(), mse])
    options.setdefault("progress", False)
    return Trainer(pipe, options.pop("optimizer", sgd()), **options)


@pytest.fixture(autouse=True)
def _clear():
    CONTEXTS.clear()
    GRAD.clear()


# Contexts and counters


def test_fit_builds_a_context_per_batch_with_optimizer_steps_as_global_step():
    trainer = make([Scale(), mse, record], max_epochs=2)

    trainer.fit(data(3), val=data(2))

    seen = [(c.stage.value, c.epoch, c.batch_idx, c.global_step) for c in CONTEXTS]
    assert seen == [
        ("train", 0, 0, 0),
        ("train", 0, 1, 1),
        ("train", 0, 2, 2),
        ("val", 0, 0, 3),
        ("val", 0, 1, 3),
        ("train", 1, 0, 3),
        ("train", 1, 1, 4),
        ("train", 1, 2, 5),
        ("val", 1, 0, 6),
        ("val", 1, 1, 6),
    ]
    assert (trainer.epoch, trainer.global_step) == (2, 6)


def test_validate_after_fit_uses_the_trainers_counters():
    trainer = make([Scale(), mse, record], max_epochs=2)
    trainer.fit(data(3))
    CONTEXTS.clear()

    trainer.validate(data(2))

    assert [(c.epoch, c.batch_idx, c.global_step) for c in CONTEXTS] == [
        (2, 0, 6),
        (2, 1, 6),
    ]


def test_val_stage_probe_sees_gradients_disabled():
    trainer = make([Scale(), mse, record])

    trainer.fit(data(2), val=data(2))
    trainer.test(data(1))
    trainer.predict(data(1))

    assert GRAD == [("train", True)] * 2 + [
        ("val", False),
        ("val", False),
        ("test", False),
        ("inference", False),
    ]


def test_validate_every_skips_validation_on_other_epochs():
    trainer = make(max_epochs=4, validate_every=2)

    history = trainer.fit(data(1), val=data(1))

    assert history["val/loss"][0] is None and history["val/loss"][2] is None
    assert history["val/loss"][1] is not None and history["val/loss"][3] is not None


# Losses


def test_weighted_losses_are_summed_for_backward_and_logged_unweighted():
    scale = Scale()
    trainer = make(
        [scale, mse, l1], loss_weights={"mse": 0.0, "l1": 2.0}, optimizer=sgd(0.1)
    )
    batch = {"x": torch.ones(4), "y": torch.full((4,), 3.0)}

    values = trainer.validate([batch])
    trainer.fit([batch])

    assert values == {"val/loss": 6.0, "val/mse": 9.0, "val/l1": 3.0}
    # d(2 * |w - 3|)/dw = -2 at w = 0; one SGD step of 0.1 moves w to 0.2
    assert scale.weight.item() == pytest.approx(0.2)


@loss(name="loss")
def named_loss(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


def test_the_only_loss_named_loss_is_the_total_itself():
    batch = {"x": torch.ones(4), "y": torch.full((4,), 3.0)}
    trainer = make([Scale(), named_loss], max_epochs=1)

    before = trainer.validate([batch])
    history = trainer.fit([batch])

    assert before == {"val/loss": 9.0}
    assert history.keys() == ["train/loss"]
    assert history["train/loss"] == [9.0]


def test_a_loss_named_loss_next_to_other_losses_is_logged_under_its_node():
    batch = {"x": torch.ones(4), "y": torch.full((4,), 3.0)}
    trainer = make([Scale(), named_loss, l1], loss_weights={"l1": 2.0})

    assert trainer.validate([batch]) == {
        "val/loss": 9.0 + 2.0 * 3.0,
        "val/loss/loss": 9.0,
        "val/l1": 3.0,
    }


def test_a_weighted_loss_named_loss_is_logged_apart_from_the_total():
    batch = {"x": torch.ones(4), "y": torch.full((4,), 3.0)}
    trainer = make([Scale(), named_loss], loss_weights={"loss": 0.5})

    assert trainer.validate([batch]) == {"val/loss": 4.5, "val/loss/loss": 9.0}


def test_unknown_loss_weight_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="loss_weights names 'mes'") as caught:
        make(loss_weights={"mes": 1.0})

    assert "Did you mean 'mse'?" in str(caught.value)


def test_nan_loss_stops_before_the_optimizer_step_naming_node_epoch_and_step():
    scale = Scale(start=1.0)
    trainer = make([scale, mse], max_epochs=2)
    batches = data(2) + [{"x": torch.ones(4), "y": torch.full((4,), float("nan"))}]

    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(batches)

    error = caught.value
    assert (error.node, error.output, error.epoch, error.global_step) == (
        "mse",
        "mse",
        0,
        2,
    )
    assert "epoch 0" in str(error) and "global step 2" in str(error)
    assert "Fix:" in str(error)
    assert not torch.isnan(scale.weight).any()
    assert trainer.global_step == 2


def test_check_finite_off_trains_on_through_a_nan_loss():
    scale = Scale(start=1.0)
    trainer = make([scale, mse], check_finite=False)
    batches = [{"x": torch.ones(4), "y": torch.full((4,), float("nan"))}]

    trainer.fit(batches)

    assert torch.isnan(scale.weight).item()


def test_a_loss_that_is_not_a_scalar_is_an_error_naming_the_node():
    @loss
    def unreduced(pred: Tensor, y: Tensor) -> Tensor:
        return (pred - y) ** 2

    with pytest.raises(ValueError, match="loss output 'unreduced' of node 'unreduced'"):
        make([Scale(), unreduced]).fit(data(1))


def test_every_loss_weight_zero_says_there_is_nothing_to_back_propagate():
    trainer = make([Scale(), mse, l1], loss_weights={"mse": 0.0, "l1": 0})

    with pytest.raises(ValueError, match="every loss weight is 0") as caught:
        trainer.fit(data(1))

    assert "'l1', 'mse'" in str(caught.value)
    assert "does not depend" not in str(caught.value)
    assert trainer.global_step == 0


def test_training_without_a_train_loss_is_an_error():
    @loss(stages="val")
    def val_only(pred: Tensor, y: Tensor) -> Tensor:
        return ((pred - y) ** 2).mean()

    with pytest.raises(
        ValueError, match="no loss node produced a value in stage TRAIN"
    ):
        make([Scale(), val_only]).fit(data(1))


# Metrics


class Accumulator:
    """The torchmetrics protocol: update, compute, reset."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.resets = 0

    def update(self, value: Tensor) -> None:
        self.values.extend(value.tolist())

    def compute(self) -> Tensor:
        return torch.tensor(max(self.values))

    def reset(self) -> None:
        self.values = []
        self.resets += 1


@metric(outputs="peak")
class Peak(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.state = Accumulator()

    def forward(self, pred: Tensor) -> Accumulator:
        self.state.update(pred)
        return self.state


def test_stateful_metric_is_computed_over_the_whole_epoch_and_reset():
    peak = Peak()
    trainer = make([Scale(1.0), peak], optimizer=None)
    for p in trainer.pipeline.parameters():
        p.requires_grad_(False)

    first = trainer.validate(data(3))
    second = trainer.validate(data(1))

    assert first == {"val/peak": 3.0}
    assert second == {"val/peak": 1.0}
    assert peak.state.values == []


@metric(outputs="hit_rate")
class HitRate(nn.Module):
    """A metric node that is itself the update/compute/reset object."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.hits, self.total = 0, 0

    def update(self, pred: Tensor, y: Tensor) -> None:
        self.hits += int((pred == y).sum())
        self.total += pred.numel()

    def compute(self) -> float:
        return self.hits / self.total

    def forward(self, pred: Tensor, y: Tensor) -> HitRate:
        self.update(pred, y)
        return self


def test_a_metric_node_that_is_stateful_itself_is_reset_before_each_evaluation():
    trainer = make([Scale(1.0), HitRate()], optimizer=None)
    trainer.pipeline.requires_grad_(False)
    miss = {"x": torch.ones(4), "y": torch.zeros(4)}
    hit = {"x": torch.ones(4), "y": torch.ones(4)}
    trainer.pipeline.forward(batch=miss, stage="val")

    assert trainer.validate([hit]) == {"val/hit_rate": 1.0}
    trainer.pipeline.forward(batch=miss, stage="test")
    assert trainer.test([hit]) == {"test/hit_rate": 1.0}


def test_a_stateful_attribute_of_a_metric_node_is_reset_before_the_first_run():
    peak = Peak()
    trainer = make([Scale(1.0), peak], optimizer=None)
    trainer.pipeline.requires_grad_(False)
    trainer.pipeline.forward(batch={"x": torch.full((2,), 9.0)}, stage="val")

    assert trainer.validate(data(1)) == {"val/peak": 1.0}


def test_a_stateful_metric_is_reset_at_the_start_of_every_train_epoch():
    @metric(stages="train", outputs="hit_rate")
    class TrainHitRate(HitRate):
        pass

    trainer = make([Scale(1.0), mse, TrainHitRate()], optimizer=sgd(0.0))
    hit = {"x": torch.ones(4), "y": torch.ones(4)}
    trainer.pipeline.forward(
        batch={"x": torch.ones(4), "y": torch.zeros(4)}, stage="train"
    )

    assert trainer.fit([hit])["train/hit_rate"] == [1.0]


def test_metric_node_may_report_metric_lists_and_dicts():
    @metric(outputs="metrics")
    def report(pred: Tensor, y: Tensor) -> list[Metric]:
        return [
            Metric(name="bias", value=(pred - y).mean()),
            Metric(name="val/n", value=1),
        ]

    @metric(outputs="extra")
    def extra(pred: Tensor) -> dict:
        return {"top": pred.max()}

    values = make([Scale(1.0), report, extra]).validate(data(2))

    assert values == {"val/bias": -1.5, "val/n": 1.0, "val/top": 1.5}


def test_metric_tensor_that_is_not_a_scalar_is_an_error():
    @metric
    def per_sample(pred: Tensor) -> Tensor:
        return pred

    with pytest.raises(ValueError, match=r"metric output 'per_sample' .* not a scalar"):
        make([Scale(), per_sample]).validate(data(1))


def test_two_metrics_with_the_same_name_are_an_error():
    @metric(outputs="a")
    def first(pred: Tensor) -> Metric:
        return Metric(name="score", value=1.0)

    @metric(outputs="b")
    def second(pred: Tensor) -> Metric:
        return Metric(name="score", value=2.0)

    with pytest.raises(ValueError, match="both logged as 'val/score'"):
        make([Scale(), first, second]).validate(data(1))


# Statistical initialisation

FITTED: list[str] = []


@node(outputs="x")
class Standardize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    def statistical_initialization(self, stream) -> None:
        FITTED.append("standardize")
        self.seen_modes = (self.training, torch.is_grad_enabled())
        rows = torch.cat([item["x"] for item in stream])
        self.mean, self.std = rows.mean(0), rows.std(0)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@node(outputs="z")
class Moments(nn.Module):
    """Downstream statistics: sees the standardised values."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)

    def statistical_initialization(self, stream) -> None:
        FITTED.append("moments")
        self.keys = [sorted(item) for item in stream]
        self.mean = torch.cat([item["x"] for item in stream]).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.mean


def raw(count: int = 4) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"x": 3 + 2 * torch.randn(16, 2, generator=generator)} for _ in range(count)
    ]


@pytest.fixture
def fitted():
    FITTED.clear()
    return FITTED


def test_statistical_nodes_are_fitted_upstream_first_from_upstream_outputs(fitted):
    moments, standardize = Moments(), Standardize()
    trainer = make([moments, standardize], optimizer=None)

    names = trainer.statistical_initialization(raw())

    assert names == ["standardize", "moments"] == fitted
    assert moments.keys == [["x"]] * 4
    torch.testing.assert_close(moments.mean, torch.zeros(2), atol=1e-6, rtol=0)
    assert standardize.seen_modes == (False, False)


def test_fit_initialises_pending_statistical_nodes_once(fitted):
    standardize = Standardize()
    trainer = make([standardize, Scale(), mse], max_epochs=1)

    trainer.fit(raw_with_targets())
    trainer.max_epochs = 2
    trainer.fit(raw_with_targets())
    assert fitted == ["standardize"] and trainer.epoch == 2

    trainer.statistical_initialization(raw_with_targets())
    assert fitted == ["standardize", "standardize"]


def test_a_validation_wiring_error_surfaces_before_any_training_step():
    @metric
    def typo(predd: Tensor, y: Tensor) -> Tensor:
        return (predd - y).abs().mean()

    trainer = make([Scale(), mse, typo, record], max_epochs=2)

    with pytest.raises(MissingInputError, match="'predd' of node 'typo'") as caught:
        trainer.fit(data(3), val=data(1))

    assert set(caught.value.stages) == {ExecutionStage.VAL}
    assert CONTEXTS == [] and trainer.global_step == 0


def test_a_train_wiring_error_surfaces_before_statistical_initialisation(fitted):
    trainer = make([Standardize(), Scale(), mse])

    with pytest.raises(MissingInputError, match="'y' of node 'mse'") as caught:
        trainer.fit(raw())

    assert set(caught.value.stages) == {ExecutionStage.TRAIN}
    assert fitted == []


def test_the_wiring_check_leaves_one_shot_batches_intact():
    trainer = make([Scale(), mse, record], max_epochs=1)

    trainer.fit(iter(data(3)), val=iter(data(2)))

    assert [(c.stage.value, c.batch_idx) for c in CONTEXTS] == [
        ("train", 0),
        ("train", 1),
        ("train", 2),
        ("val", 0),
        ("val", 1),
    ]


def test_the_wiring_check_does_not_change_the_shuffled_order():
    samples = [{"x": torch.full((1,), float(i)), "y": torch.zeros(1)} for i in range(8)]
    loader = DataLoader(samples, batch_size=2, shuffle=True)
    torch.manual_seed(7)
    expected = [batch["x"].flatten().tolist() for batch in loader]
    seen: list[list[float]] = []

    @node(stages="train", outputs="tap")
    def tap(x: Tensor) -> Tensor:
        seen.append(x.flatten().tolist())
        return x

    torch.manual_seed(7)
    make([Scale(), mse, tap]).fit(loader, val=loader)

    assert seen == expected


def raw_with_targets() -> list[dict[str, Tensor]]:
    return [{**batch, "y": torch.zeros(16, 2)} for batch in raw()]


def test_optimizer_callable_is_built_after_statistical_initialisation(fitted):
    seen: list[int] = []

    @node(outputs="pred")
    class LateHead(nn.Module):
        """Creates its parameter only once the data's width is known."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = None

        def statistical_initialization(self, stream) -> None:
            width = next(iter(stream))["x"].shape[-1]
            self.weight = nn.Parameter(torch.zeros(width))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.weight

    def optimizer(params):
        seen.append(len(params))
        return torch.optim.SGD(params, lr=0.1)

    trainer = make([LateHead(), mse], optimizer=optimizer)
    trainer.fit(raw_with_targets())

    assert seen == [1]
    assert trainer.optimizer is not None and trainer.global_step == 4


def test_stream_item_keys_are_port_names_not_wire_names(fitted):
    moments = node(Moments(), inputs={"x": "cube"})
    trainer = make([moments], optimizer=None)

    trainer.statistical_initialization([{"cube": torch.ones(3, 2)}])

    assert moments.keys == [["x"]]


@node(stages="train", outputs="x")
def shift(x: Tensor) -> Tensor:
    return x + 100


@pytest.mark.parametrize(("stage", "expected"), [("train", 103.0), ("inference", 3.0)])
def test_statistical_stage_decides_which_nodes_feed_the_stream(fitted, stage, expected):
    moments = Moments()
    trainer = make([shift, moments], optimizer=None, statistical_stage=stage)

    trainer.statistical_initialization(raw())

    assert moments.mean.mean().item() == pytest.approx(expected, abs=0.5)


def test_statistical_node_outside_the_statistical_stage_is_an_error(fitted):
    late = node(Standardize(), stages="inference")

    with pytest.raises(ValueError, match="do not run in TRAIN") as caught:
        make([late], optimizer=None).statistical_initialization(raw())

    assert "statistical_stage=" in str(caught.value)


def test_stream_can_be_iterated_twice_when_the_batches_can(fitted):
    passes: list[int] = []

    @node(outputs="x")
    class TwoPass(nn.Module):
        def statistical_initialization(self, stream) -> None:
            passes.append(sum(1 for _ in stream))
            passes.append(sum(1 for _ in stream))
            passes.append(len(stream))

        def forward(self, x: Tensor) -> Tensor:
            return x

    make([TwoPass()], optimizer=None).statistical_initialization(raw(3))

    assert passes == [3, 3, 3]


def test_one_shot_batches_used_twice_are_an_error_not_an_empty_epoch():
    trainer = make(max_epochs=2)

    with pytest.raises(TypeError, match="one-shot iterator"):
        trainer.fit(iter(data(2)))


def test_uninitialised_statistical_node_warns_before_evaluation(fitted):
    trainer = make([Standardize(), Scale(), mse])

    with (
        pytest.warns(CuvisDSLWarning, match="'standardize' are not initialised"),
        pytest.raises(TypeError),
    ):
        trainer.validate(raw_with_targets())


# Optimiser


def test_trainable_parameters_without_an_optimizer_are_an_error():
    with pytest.raises(ValueError, match="no optimiser") as caught:
        make(optimizer=None).fit(data(1))

    assert "Fix: Trainer(pipe, optimizer=" in str(caught.value)


def test_optimizer_over_foreign_parameters_is_an_error():
    other = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="not parameters of the pipeline"):
        make(optimizer=torch.optim.SGD(other.parameters(), lr=0.1)).fit(data(1))


def test_optimizer_instance_is_used_as_given():
    scale = Scale()
    optimizer = torch.optim.SGD(scale.parameters(), lr=0.01)
    trainer = make([scale, mse], optimizer=optimizer)

    trainer.fit(data(1))

    assert trainer.optimizer is optimizer and scale.weight.item() != 0.0


# Callbacks and checkpoints


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    trainer = make(
        max_epochs=10,
        optimizer=sgd(0.0),
        callbacks=[EarlyStopping(monitor="val/loss", patience=2)],
    )

    history = trainer.fit(data(1), val=data(1))

    assert len(history) == 3 and trainer.epoch == 3


def test_early_stopping_on_a_missing_key_lists_the_recorded_ones():
    trainer = make(callbacks=[EarlyStopping(monitor="val/auroc", mode="max")])

    with pytest.raises(KeyError, match="val/auroc") as caught:
        trainer.fit(data(1), val=data(1))

    assert "'val/loss'" in str(caught.value)


def test_best_checkpoint_keeps_the_best_epoch(tmp_path):
    best = BestCheckpoint(monitor="val/mae", path=tmp_path / "best.pt", mode="min")
    trainer = make(
        [Scale(), mse, mae], max_epochs=4, optimizer=sgd(0.02), callbacks=[best]
    )

    history = trainer.fit(data(2), val=data(2))

    assert best.best_epoch == history.best("val/mae")[0]
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["epoch"] == best.best_epoch + 1
    assert saved["history"]["epochs"] == list(range(best.best_epoch + 1))


def test_checkpoint_dir_receives_last_checkpoint_every_epoch(tmp_path):
    epochs: list[int] = []

    class Peek(Callback):
        def on_epoch_end(self, trainer, epoch, logs) -> None:
            if (tmp_path / "last.pt").exists():
                epochs.append(
                    torch.load(tmp_path / "last.pt", weights_only=True)["epoch"]
                )

    trainer = make(max_epochs=3, checkpoint_dir=tmp_path, callbacks=[Peek()])
    trainer.fit(data(1))

    assert epochs == [1, 2]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def test_load_checkpoint_restores_pipeline_counters_and_history(tmp_path):
    trainer = make(max_epochs=2)
    trainer.fit(data(2), val=data(1))
    trainer.save_checkpoint(tmp_path / "ckpt.pt")

    fresh = make(max_epochs=2)
    fresh.load_checkpoint(tmp_path / "ckpt.pt")

    assert (fresh.epoch, fresh.global_step) == (2, 4)
    assert fresh.history.records == trainer.history.records
    assert fresh.validate(data(1)) == trainer.validate(data(1))
    assert fresh.optimizer is not None


def test_load_checkpoint_for_evaluation_ignores_the_runs_callbacks(tmp_path):
    stopper = EarlyStopping(monitor="train/loss")
    trainer = make(max_epochs=1, callbacks=[stopper], checkpoint_dir=tmp_path)
    trainer.fit(data(2))

    fresh = make(optimizer=None)
    fresh.load_checkpoint(tmp_path / "last.pt")

    assert fresh.epoch == 1
    assert fresh.validate(data(1)) == trainer.validate(data(1))


def test_fit_after_load_checkpoint_needs_the_runs_callbacks(tmp_path):
    stopper = EarlyStopping(monitor="train/loss")
    make(max_epochs=1, callbacks=[stopper], checkpoint_dir=tmp_path).fit(data(2))
    other = make(
        max_epochs=2, callbacks=[BestCheckpoint("train/loss", tmp_path / "b.pt")]
    )

    with pytest.warns(CuvisDSLWarning, match="their states are not restored"):
        other.load_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ValueError, match="cannot be matched"):
        other.fit(data(2))
    assert other.global_step == 2


def test_checkpoint_saved_right_after_loading_keeps_the_position(tmp_path):
    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, batch_idx, outputs) -> None:
            if (trainer.epoch, batch_idx) == (1, 0):
                trainer.save_checkpoint(tmp_path / "mid.pt")

    make(max_epochs=2, callbacks=[SaveAt()]).fit(data(3))
    fresh = make(max_epochs=2, callbacks=[SaveAt()])
    fresh.load_checkpoint(tmp_path / "mid.pt")

    fresh.save_checkpoint(tmp_path / "again.pt")

    again = torch.load(tmp_path / "again.pt", weights_only=True)
    original = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert (again["batch_idx"], again["global_step"]) == (1, 4)
    assert torch.equal(again["rng"]["torch"], original["rng"]["torch"])


# History, progress and logging


def test_fit_returns_a_history_with_per_epoch_values_per_stage():
    history = make([Scale(), mse, mae], max_epochs=2).fit(data(2), val=data(2))

    assert history.epochs == [0, 1]
    assert history.keys() == [
        "train/loss",
        "train/mse",
        "val/loss",
        "val/mae",
        "val/mse",
    ]
    assert str(history).splitlines()[0].split() == ["epoch", *history.keys()]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_go_to_a_terminal_stderr_and_can_be_turned_off(monkeypatch):
    quiet, loud = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    make(progress=False).fit(data(2), val=data(1))
    monkeypatch.setattr(sys, "stderr", loud)
    make(progress=True).fit(data(2), val=data(1))

    assert quiet.getvalue() == ""
    assert "epoch 0 train" in loud.getvalue()


def test_progress_bars_stay_off_when_stderr_is_not_a_terminal(capsys):
    make(progress=True, max_epochs=3).fit(data(2), val=data(1))

    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_lifecycle_is_logged_at_info_and_nothing_is_printed(caplog, capsys):
    with caplog.at_level(logging.DEBUG, logger="cuvis_dsl"):
        make(max_epochs=2).fit(data(1))

    trainer_records = [r for r in caplog.records if r.name == "cuvis_dsl.trainer"]
    assert trainer_records and max(r.levelno for r in trainer_records) == logging.INFO
    assert any("epoch 1" in r.getMessage() for r in trainer_records)
    assert capsys.readouterr().out == ""


def test_a_batch_that_is_not_a_dict_is_an_error():
    with pytest.raises(TypeError, match="a batch must be a dict"):
        make().fit([(torch.ones(2), torch.ones(2))])


def test_device_option_moves_batches_to_the_device():
    devices: list[torch.device] = []

    @node(stages="val", outputs="where")
    def where(x: Tensor) -> Tensor:
        devices.append(x.device)
        return x

    make([Scale(), mse, where], device="cpu").validate(data(1))

    assert devices == [torch.device("cpu")]


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="max_epochs"):
        make(max_epochs=-1)
    with pytest.raises(ValueError, match="validate_every"):
        make(validate_every=0)
    with pytest.raises(TypeError, match="optimizer must be"):
        make(optimizer="adam")
    with pytest.raises(ValueError, match="unknown execution stage"):
        make(statistical_stage="training")


def test_two_phase_example_runs_and_prints_its_history(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "two_phase.py"

    runpy.run_path(str(example), run_name="__main__")

    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("epoch"))
    assert out[header].split() == [
        "epoch",
        "train/loss",
        "train/bce",
        "val/loss",
        "val/accuracy",
        "val/bce",
    ]
    assert out[header + 1].split()[0] == "0"
    assert out[-1].startswith("test: test/loss=")


# Class-form nodes whose outputs are undeclared


class Model(Node):
    OUTPUT_SPECS = {"predictions": PortSpec(dtype=torch.float32, shape=(-1,))}  # noqa: RUF012

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weight = nn.Parameter(torch.tensor(0.5))

    def forward(self, data, **_):
        return {"predictions": self.weight * data}


class AbsLoss(LossNode):
    def forward(self, predictions, targets, **_):
        return {"loss": (predictions - targets).abs().mean()}


class Report(Node):
    """The cuvis.ai pattern: a plain Node reporting Metric objects."""

    def __init__(self, **kwargs) -> None:
        super().__init__(execution_stages={"val", "test"}, **kwargs)

    def forward(self, predictions, targets, context, **_):
        gap = (predictions - targets).abs().max()
        return {"metrics": [Metric(name="max_gap", value=gap, stage=context.stage)]}


def test_undeclared_class_form_losses_and_metric_objects_are_collected():
    model, report = Model(), Report()
    trainer = Trainer(
        Pipeline([model, AbsLoss(), report]),
        sgd(0.1),
        loss_weights={"abs_loss": 2.0},
        progress=False,
    )
    batches = [{"data": torch.ones(4), "targets": torch.full((4,), 2.0)}]

    before = trainer.validate(batches)
    trainer.fit(batches)

    assert before == {"val/loss": 3.0, "val/abs_loss": 1.5, "val/max_gap": 1.5}
    # d(2 * |w - 2|)/dw = -2 at w = 0.5; one step of 0.1 moves w to 0.7
    assert model.weight.item() == pytest.approx(0.7)
    assert not model._forward_hooks and not report._forward_hooks
