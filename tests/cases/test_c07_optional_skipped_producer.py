"""C07: an optional input with a skipped producer gets its default, never stale."""

from collections import Counter

import pytest
import torch
from torch import Tensor

from cuvis_dsl import ExecutionStage, MissingInputError, Pipeline, node


@pytest.fixture
def calls():
    return Counter()


@pytest.fixture
def nodes(calls):
    seen = []

    @node(outputs="cube")
    def load() -> Tensor:
        calls["load"] += 1
        return torch.ones(2)

    @node(stages="train", outputs="mask")
    def make_mask(cube: Tensor) -> Tensor:
        calls["make_mask"] += 1
        return cube > 0

    @node
    def score(cube: Tensor, mask: Tensor | None = None) -> Tensor:
        calls["score"] += 1
        seen.append(mask)
        return cube.sum() if mask is None else cube[mask].sum() * 10

    @node
    def report(mask: Tensor) -> Tensor:
        calls["report"] += 1
        return mask

    return {
        "load": load,
        "make_mask": make_mask,
        "score": score,
        "report": report,
        "seen": seen,
    }


def test_inference_after_train_gives_none_not_the_train_mask(nodes, calls):
    pipe = Pipeline([nodes["load"], nodes["make_mask"], nodes["score"]])
    train = pipe.forward(stage="train")
    inference = pipe.forward(stage="inference")
    assert train["score"].item() == 20.0
    assert inference["score"].item() == 2.0
    assert "mask" not in inference
    assert nodes["seen"][1] is None
    assert calls == Counter(load=2, make_mask=1, score=2)


def test_requested_score_in_inference_runs_without_the_skipped_producer(nodes, calls):
    pipe = Pipeline([nodes["load"], nodes["make_mask"], nodes["score"]])
    out = pipe.forward(stage="inference", outputs="score")
    assert list(out) == ["score"]
    assert calls == Counter(load=1, score=1)


def test_plan_and_explain_show_the_default(nodes):
    pipe = Pipeline([nodes["load"], nodes["make_mask"], nodes["score"]])
    plan = pipe.plan("inference")
    assert plan.nodes == ("load", "score")
    assert plan.skipped == {"make_mask": "runs in TRAIN, not INFERENCE"}
    assert "mask: default None (its producer make_mask does not run in INFERENCE)" in (
        pipe.explain("score", "inference")
    )


def test_optional_without_default_gets_none_when_its_producer_is_skipped(nodes):
    seen = []

    @node
    def score(cube: Tensor, mask: Tensor | None) -> Tensor:
        seen.append(mask)
        return cube.sum()

    pipe = Pipeline([nodes["load"], nodes["make_mask"], score])
    pipe.forward(stage="train")
    pipe.forward(stage="inference")
    assert seen[1] is None and seen[0] is not None


def test_required_input_with_skipped_producer_fails_before_anything_runs(nodes, calls):
    variant = [nodes["load"], nodes["make_mask"], nodes["score"], nodes["report"]]
    with pytest.raises(MissingInputError) as info:
        Pipeline(variant)
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == ("report", "mask")
    assert ExecutionStage.INFERENCE in problem.stages
    assert ExecutionStage.TRAIN not in problem.stages
    message = str(info.value)
    assert "node 'report'" in message
    assert "produced only by 'make_mask'" in message
    assert "INFERENCE" in message
    assert not calls


def test_required_input_variant_restricted_to_train_runs(nodes, calls):
    report = node(nodes["report"], stages="train")
    pipe = Pipeline([nodes["load"], nodes["make_mask"], nodes["score"], report])
    assert "report" in pipe.forward(stage="train")
    assert "report" not in pipe.forward(stage="inference")
    assert calls["report"] == 1
