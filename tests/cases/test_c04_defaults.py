"""C04: a parameter with a default and no producer is optional, never required."""

import pytest
import torch
from torch import Tensor

from cuvis_dsl import Pipeline, node

SCORES = torch.arange(101) / 100


@node
def threshold(scores: Tensor, q: float = 0.95) -> Tensor:
    return torch.quantile(scores, q)


def test_default_is_used_when_nothing_provides_it():
    out = Pipeline([threshold]).forward(batch={"scores": SCORES}, stage="val")
    assert out["threshold"].item() == pytest.approx(0.95)


def test_batch_value_overrides_the_default():
    out = Pipeline([threshold]).forward(batch={"scores": SCORES, "q": 0.5}, stage="val")
    assert out["threshold"].item() == pytest.approx(0.5)


def test_explicit_none_is_forwarded_not_replaced_by_the_default():
    seen = []

    @node
    def threshold(scores: Tensor, q: float = 0.95) -> Tensor:
        seen.append(q)
        return scores

    Pipeline([threshold]).forward(batch={"scores": SCORES, "q": None}, stage="val")
    assert seen == [None]


def test_explicit_none_reaches_the_body_and_its_error():
    with pytest.raises(TypeError, match="quantile") as info:
        Pipeline([threshold]).forward(batch={"scores": SCORES, "q": None}, stage="val")
    assert "q=None" in info.value.__notes__[0]


def test_introspection_reports_the_default():
    port = threshold.spec.input("q")
    assert port.optional and port.default == 0.95
    assert "q: float = 0.95" in repr(threshold)
    explained = Pipeline([threshold]).explain("threshold", "val", batch=["scores"])
    assert "q: default 0.95 (not in the batch)" in explained


def test_plan_reads_only_the_required_key():
    plan = Pipeline([threshold]).plan("val")
    assert plan.inputs == ("scores",)
