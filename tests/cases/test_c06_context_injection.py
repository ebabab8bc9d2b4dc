"""C06: the Context is found by annotation or by the name ``context`` alone."""

import _c05_future as future
import _c05_plain as plain
import pytest
import torch
from torch import Tensor, nn

import cuvis_dsl
from cuvis_dsl import Context, ExecutionStage, Pipeline, loss, node


@pytest.mark.parametrize("module", [future, plain])
def test_annotated_context_under_any_name_is_not_a_port(module):
    spec = module.log_step.spec
    assert spec.context == "ctx"
    assert [port.name for port in spec.inputs] == ["loss"]


@pytest.mark.parametrize("module", [future, plain])
def test_annotated_context_receives_the_live_context(module):
    module.SEEN.clear()
    context = Context(stage="val", epoch=4, batch_idx=2, global_step=30)
    out = Pipeline([module.log_step]).forward(
        batch={"loss": torch.tensor(1.0)}, context=context
    )
    assert out["log_step"].item() == 1.0
    assert [context] == module.SEEN


@pytest.mark.parametrize("module", [future, plain])
def test_nothing_is_wired_to_the_context_parameter(module):
    plan = Pipeline([module.log_step]).plan("train")
    assert plan.inputs == ("loss",)


@pytest.mark.skipif(not hasattr(cuvis_dsl, "Trainer"), reason="needs cuvis_dsl.Trainer")
@pytest.mark.parametrize("module", [future, plain])
def test_context_during_validate_matches_the_trainer_counters(module):
    @node(outputs="scores")
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor(1.0))

        def forward(self, x: Tensor) -> Tensor:
            return self.weight * x

    @loss
    def mse(scores: Tensor, y: Tensor) -> Tensor:
        return ((scores - y) ** 2).mean()

    pipe = Pipeline([Scale(), mse, node(module.log_step, inputs={"loss": "mse"})])
    batches = [{"x": torch.ones(2), "y": torch.zeros(2)}] * 3
    trainer = cuvis_dsl.Trainer(
        pipe,
        lambda params: torch.optim.SGD(params, lr=0.1),
        max_epochs=2,
        progress=False,
    )
    trainer.fit(batches)
    module.SEEN.clear()
    trainer.validate(batches)
    assert [c.stage for c in module.SEEN] == [ExecutionStage.VAL] * 3
    assert [c.batch_idx for c in module.SEEN] == [0, 1, 2]
    assert {c.global_step for c in module.SEEN} == {trainer.global_step} == {6}
    assert {c.epoch for c in module.SEEN} == {trainer.epoch}


def test_context_annotated_as_tensor_is_a_data_port_fed_by_its_producer():
    @node
    def context() -> Tensor:
        return torch.ones(2)

    @node
    def f(x: Tensor, context: Tensor) -> Tensor:
        return x + context

    assert f.spec.context is None
    out = Pipeline([context, f]).forward(batch={"x": torch.ones(2)}, stage="val")
    assert torch.equal(out["f"], torch.full((2,), 2.0))


def test_context_annotated_as_tensor_never_receives_the_context():
    seen = []

    @node
    def f(x: Tensor, context: Tensor | None = None) -> Tensor:
        seen.append(context)
        return x

    Pipeline([f]).forward(batch={"x": torch.ones(1)}, stage="val")
    assert seen == [None]


@pytest.mark.parametrize("module", [future, plain])
def test_unannotated_context_is_the_context_with_or_without_the_future_import(
    module,
):
    spec = module.by_name.spec
    assert spec.context == "context"
    assert [port.name for port in spec.inputs] == ["x"]


def test_unannotated_context_with_a_producer_of_that_name_still_gets_the_context():
    seen = []

    @node
    def context() -> int:
        return 5

    @node
    def g(x, context):
        seen.append(context)
        return x

    Pipeline([context, g]).forward(batch={"x": 1}, stage="test")
    assert seen == [Context(stage="test")]
