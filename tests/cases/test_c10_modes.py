"""C10: train/eval and grad modes are set per stage and restored exactly.

A trainable node holds Dropout and BatchNorm; a probe records, for every
batch, the stage, the modes of the trainable node and its submodules, and
whether autograd is on. TRAIN batches must see train mode with grad, every
other stage eval mode without grad, and every Trainer call must leave the
modes exactly as it found them, also when a node raises.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cuvis_dsl import Context, Pipeline, Trainer, loss, node

SEEN: list[tuple[str, int, int, bool, bool, bool, bool]] = []


@node(outputs="scores")
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 1)

    def forward(self, x: Tensor, context: Context) -> Tensor:
        SEEN.append(
            (
                context.stage.value,
                context.epoch,
                context.batch_idx,
                self.training,
                self.norm.training,
                self.drop.training,
                torch.is_grad_enabled(),
            )
        )
        return self.head(self.drop(self.norm(self.linear(x)))).squeeze(-1)


@node(stages="train|val", outputs="probe")
class Probe(nn.Module):
    def forward(self, scores: Tensor) -> Tensor:
        PROBED.append((self.training, torch.is_grad_enabled()))
        return scores.detach()


PROBED: list[tuple[bool, bool]] = []


@loss
def mse(scores: Tensor, y: Tensor) -> Tensor:
    return ((scores - y) ** 2).mean()


class Boom(RuntimeError):
    pass


@node(stages="val", outputs="checked")
def explode_on_second_batch(scores: Tensor, context: Context) -> Tensor:
    if context.batch_idx == 1:
        raise Boom("validation batch 1 is broken")
    return scores


def batches(count: int, seed: int = 0) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "x": torch.randn(8, 4, generator=generator),
            "y": torch.randn(8, generator=generator),
        }
        for _ in range(count)
    ]


def modes(module: nn.Module) -> dict[str, bool]:
    return {name: child.training for name, child in module.named_modules()}


def make_trainer(pipe: Pipeline, **options) -> Trainer:
    return Trainer(
        pipe,
        lambda params: torch.optim.SGD(params, lr=0.01),
        progress=False,
        **options,
    )


@pytest.fixture(autouse=True)
def _clear():
    SEEN.clear()
    PROBED.clear()


def test_fit_after_eval_trains_in_train_mode_and_validates_in_eval_mode():
    pipe = Pipeline([Net(), Probe(), mse])
    pipe.eval()

    make_trainer(pipe, max_epochs=2).fit(batches(3), val=batches(2, seed=1))

    train = [row for row in SEEN if row[0] == "train"]
    val = [row for row in SEEN if row[0] == "val"]
    assert len(train) == 6 and len(val) == 4
    assert all(row[3:] == (True, True, True, True) for row in train)
    assert all(row[3:] == (False, False, False, False) for row in val)
    first_after_validation = [row for row in SEEN if row[:3] == ("train", 1, 0)]
    assert first_after_validation[0][3:] == (True, True, True, True)
    assert PROBED.count((True, True)) == 6 and PROBED.count((False, False)) == 4


def test_fit_after_predict_trains_every_batch_in_train_mode_with_grad():
    pipe = Pipeline([Net(), Probe(), mse])
    trainer = make_trainer(pipe, max_epochs=2)

    trainer.predict(batches(2))
    trainer.fit(batches(3), val=batches(2, seed=1))

    assert [row[0] for row in SEEN[:2]] == ["inference"] * 2
    assert all(row[3:] == (False, False, False, False) for row in SEEN[:2])
    train = [row for row in SEEN if row[0] == "train"]
    assert [(row[1], row[2]) for row in train] == [
        (epoch, batch) for epoch in range(2) for batch in range(3)
    ]
    assert all(row[3:] == (True, True, True, True) for row in train)
    assert PROBED.count((True, True)) == 6


def test_fit_restores_the_modes_it_was_called_with():
    pipe = Pipeline([Net(), Probe(), mse])
    pipe.eval()
    pipe["net"].drop.train()
    before = modes(pipe)

    make_trainer(pipe, max_epochs=1).fit(batches(2), val=batches(1))

    assert modes(pipe) == before
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    ("call", "stage"), [("validate", "val"), ("test", "test"), ("predict", "inference")]
)
def test_evaluation_stages_run_in_eval_mode_without_grad(call, stage):
    pipe = Pipeline([Net(), mse])
    pipe.train()
    before = modes(pipe)

    getattr(make_trainer(pipe), call)(batches(2))

    assert [row[0] for row in SEEN] == [stage, stage]
    assert all(row[3:] == (False, False, False, False) for row in SEEN)
    assert modes(pipe) == before
    assert torch.is_grad_enabled()


def test_predict_outputs_do_not_require_grad():
    pipe = Pipeline([Net(), mse])

    results = make_trainer(pipe).predict(batches(1))

    assert results[0]["scores"].requires_grad is False


def test_batchnorm_statistics_change_only_in_train_batches():
    net = Net()
    pipe = Pipeline([net, mse])
    trainer = make_trainer(pipe)
    untouched = net.norm.running_mean.clone()

    trainer.validate(batches(2))
    trainer.test(batches(2))
    trainer.predict(batches(2))
    assert torch.equal(net.norm.running_mean, untouched)

    trainer.fit(batches(1))
    assert not torch.equal(net.norm.running_mean, untouched)


def mixed_modes_pipeline() -> Pipeline:
    pipe = Pipeline([Net(), Probe(), mse, explode_on_second_batch])
    pipe.train()
    pipe["net"].norm.eval()
    return pipe


def test_exception_in_validation_during_fit_restores_grad_and_modes():
    pipe = mixed_modes_pipeline()
    before = modes(pipe)

    with pytest.raises(Boom) as caught:
        make_trainer(pipe, max_epochs=2).fit(batches(2), val=batches(3))

    assert str(caught.value) == "validation batch 1 is broken"
    assert torch.is_grad_enabled() is True
    assert modes(pipe) == before


def test_exception_in_validate_restores_grad_and_modes():
    pipe = mixed_modes_pipeline()
    before = modes(pipe)

    with pytest.raises(Boom) as caught:
        make_trainer(pipe).validate(batches(3))

    assert str(caught.value) == "validation batch 1 is broken"
    assert torch.is_grad_enabled() is True
    assert modes(pipe) == before


def test_grad_mode_of_the_caller_is_restored_even_when_it_was_off():
    pipe = mixed_modes_pipeline()

    with torch.no_grad():
        with pytest.raises(Boom):
            make_trainer(pipe, max_epochs=1).fit(batches(1), val=batches(3))
        assert torch.is_grad_enabled() is False

    train = [row for row in SEEN if row[0] == "train"]
    assert train and all(row[6] for row in train)
