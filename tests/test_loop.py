"""The stage loop: modes, contexts, totals, and restoring state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Context, ExecutionStage, NonFiniteLossError, Pipeline, loss, node
from cuvis_dsl._collect import Collector
from cuvis_dsl._loop import SharedEvalMode, StageLoop, preserved_modes
from cuvis_dsl._statistical import Batches


def test_preserved_modes_restores_each_module_and_grad_after_an_error():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    net[1].eval()
    before = [m.training for m in net.modules()]

    with pytest.raises(KeyError), preserved_modes(net):
        net.eval()
        torch.set_grad_enabled(False)
        raise KeyError("boom")

    assert [m.training for m in net.modules()] == before
    assert torch.is_grad_enabled()


def test_shared_eval_mode_restores_the_modes_when_the_last_user_leaves():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net[0].eval()
    shared = SharedEvalMode(net)
    first, second = shared(), shared()

    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    during = [m.training for m in net.modules()]
    second.__exit__(None, None, None)
    after = [m.training for m in net.modules()]
    with pytest.raises(KeyError), shared():
        raise KeyError("boom")

    assert during == [False, False, False]
    assert after == [True, False, True]
    assert [m.training for m in net.modules()] == [True, False, True]


@node(outputs="pred")
def pred(x: Tensor) -> Tensor:
    return x


@loss
def first(pred: Tensor) -> Tensor:
    return pred.mean()


@loss
def second(pred: Tensor) -> Tensor:
    return pred.max()


def loop(weights=None, **options) -> StageLoop:
    pipe = Pipeline([pred, first, second])
    options = {"batch_size": None, "device": None, "progress": False} | options
    options.setdefault("check_finite", True)
    return StageLoop(pipe, Collector(pipe.specs, weights or {}), **options)


def test_total_is_the_weighted_sum_of_the_loss_terms():
    batch = {"x": torch.tensor([1.0, 3.0])}

    run = loop({"first": 0.5, "second": 2.0}).run(batch, Context(stage="val"))
    total, terms = run.total, run.terms

    assert total.item() == 0.5 * 2.0 + 2.0 * 3.0
    assert [(t.key, t.value.item()) for t in terms] == [
        ("val/first", 2.0),
        ("val/second", 3.0),
    ]


def test_a_zero_weight_loss_is_left_out_of_the_total_even_when_nan():
    @loss
    def broken(pred: Tensor) -> Tensor:
        return torch.tensor(float("nan"))

    pipe = Pipeline([pred, first, broken])
    stage_loop = StageLoop(
        pipe,
        Collector(pipe.specs, {"broken": 0.0}),
        batch_size=None,
        device=None,
        progress=False,
        check_finite=True,
    )

    run = stage_loop.run({"x": torch.ones(2)}, Context(stage="train"))

    assert run.total.item() == 1.0


def test_non_finite_train_loss_names_the_first_bad_loss():
    context = Context(stage="train", epoch=2, batch_idx=5, global_step=40)

    with pytest.raises(NonFiniteLossError, match="loss 'first' of node 'first'") as e:
        loop().run({"x": torch.tensor([float("inf"), 1.0])}, context)

    assert (e.value.epoch, e.value.global_step, e.value.stage) == (
        2,
        40,
        ExecutionStage.TRAIN,
    )


def test_non_finite_losses_outside_train_are_recorded_not_raised():
    run = loop().run({"x": torch.tensor([float("nan")])}, Context(stage="val"))

    assert run.total.isnan()


def test_evaluate_counts_batches_and_predict_returns_requested_outputs():
    stage_loop = loop()
    batches = Batches([{"x": torch.ones(2)}, {"x": torch.ones(3)}], "val")

    values = stage_loop.evaluate(ExecutionStage.VAL, batches, epoch=0, global_step=0)
    results = stage_loop.predict(batches, 0, 0, outputs="pred")

    assert values == {"val/loss": 2.0, "val/first": 1.0, "val/second": 1.0}
    assert [sorted(r) for r in results] == [["pred"], ["pred"]]


def test_prepare_moves_nested_values_to_the_device():
    batch = {
        "x": torch.ones(1),
        "pair": (torch.ones(1), "tag"),
        "many": [torch.ones(1)],
    }

    moved = loop(device=torch.device("cpu")).prepare(batch)

    assert moved["pair"][1] == "tag" and moved["many"][0].device.type == "cpu"
    assert moved is not batch
