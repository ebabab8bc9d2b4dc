"""Pipeline.forward, lazy plans, plan()/explain(), run-time checks and error notes."""

import logging
import traceback
from collections import Counter
from typing import Annotated

import pytest
import torch
from torch import Tensor

from cuvis_dsl import (
    Context,
    ExecutionStage,
    LossNode,
    MissingInputError,
    Pipeline,
    PortSpec,
    PortValidationError,
    loss,
    metric,
    node,
)

F32 = torch.float32


@pytest.fixture
def calls():
    return Counter()


@pytest.fixture
def pipe(calls):
    """load -> features -> scores, a TRAIN-only augment, a loss and a metric."""

    @node
    def load(raw: Tensor) -> Tensor:
        calls["load"] += 1
        return raw.float()

    @node(stages="train", outputs="load")
    def augment(load: Tensor) -> Tensor:
        calls["augment"] += 1
        return load + 100

    @node
    def features(load: Tensor) -> Tensor:
        calls["features"] += 1
        return load * 2

    @node
    def scores(features: Tensor) -> Tensor:
        calls["scores"] += 1
        return features.sum(-1)

    @loss
    def mse(scores: Tensor, target: Tensor) -> Tensor:
        calls["mse"] += 1
        return ((scores - target) ** 2).mean()

    @metric
    def mae(scores: Tensor, target: Tensor) -> Tensor:
        calls["mae"] += 1
        return (scores - target).abs().mean()

    return Pipeline([mae, mse, scores, features, augment, load])


BATCH = {"raw": torch.ones(2, 3), "target": torch.zeros(2)}


# forward ----------------------------------------------------------------------


def test_forward_returns_every_output_of_the_stage(pipe):
    out = pipe.forward(batch=BATCH, stage="val")
    assert sorted(out) == ["features", "load", "mae", "mse", "scores"]
    assert torch.equal(out["scores"], torch.full((2,), 6.0))
    assert out["mae"].item() == 6.0


def test_forward_in_train_runs_stage_nodes_only(pipe, calls):
    out = pipe.forward(batch=BATCH, stage="train")
    assert "mae" not in out
    assert torch.equal(out["load"], torch.full((2, 3), 101.0))
    assert calls == Counter(load=1, augment=1, features=1, scores=1, mse=1)


def test_forward_takes_the_stage_from_the_context(pipe, calls):
    out = pipe.forward(batch=BATCH, context=Context(stage=ExecutionStage.TEST))
    assert "mae" in out and calls["augment"] == 0


def test_forward_accepts_a_matching_stage_and_context(pipe):
    context = Context(stage="val")
    assert "mae" in pipe.forward(batch=BATCH, context=context, stage="val")


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({}, ValueError, "forward needs the stage of the run"),
        ({"stage": "always"}, ValueError, "not ALWAYS"),
        ({"stage": "train|val"}, ValueError, "exactly one stage"),
        ({"stage": "vall"}, ValueError, "Did you mean 'val'"),
        ({"context": Context("val"), "stage": "train"}, ValueError, "disagrees"),
        ({"context": "val"}, TypeError, "context must be a Context"),
        ({"stage": "val", "batch": [1]}, TypeError, "batch must be a mapping"),
    ],
)
def test_forward_rejects_bad_arguments(pipe, kwargs, error, fragment):
    kwargs.setdefault("batch", BATCH)
    with pytest.raises(error, match=fragment):
        pipe.forward(**kwargs)


def test_nodes_receive_the_context_of_the_call():
    seen = []

    @node
    def probe(x, context):
        seen.append(context)
        return x

    context = Context(stage="val", epoch=2, batch_idx=5, global_step=11)
    Pipeline([probe]).forward(batch={"x": 1}, context=context)
    Pipeline([probe]).forward(batch={"x": 1}, stage="test")
    assert seen[0] is context
    assert seen[1] == Context(stage="test")


# Lazy execution ---------------------------------------------------------------


def test_requested_output_runs_only_its_dependencies(pipe, calls):
    out = pipe.forward(batch=BATCH, stage="val", outputs="features")
    assert list(out) == ["features"]
    assert calls == Counter(load=1, features=1)


def test_requested_outputs_accept_a_list(pipe, calls):
    out = pipe.forward(batch=BATCH, stage="val", outputs=["mae", "load"])
    assert list(out) == ["mae", "load"]
    assert calls == Counter(load=1, features=1, scores=1, mae=1)


def test_lazy_run_needs_only_the_batch_keys_it_reads(pipe, calls):
    out = pipe.forward(batch={"raw": torch.ones(1, 1)}, stage="val", outputs="scores")
    assert out["scores"].item() == 2.0
    assert "mse" not in calls


def test_requested_batch_key_is_returned_as_given(pipe):
    target = BATCH["target"]
    out = pipe.forward(batch=BATCH, stage="val", outputs=["target"])
    assert out == {"target": target}


def test_requested_rebound_name_runs_the_rebinder_only_in_its_stage(pipe, calls):
    train = pipe.forward(batch=BATCH, stage="train", outputs="load")
    val = pipe.forward(batch=BATCH, stage="val", outputs="load")
    assert train["load"][0, 0].item() == 101.0
    assert val["load"][0, 0].item() == 1.0
    assert calls == Counter(load=2, augment=1)


def test_requested_fan_in_name_returns_the_list_in_node_name_order():
    parts = [
        node(lambda v=v: v, name=name, outputs="part")
        for name, v in (("zeta", 3), ("alpha", 1), ("mid", 2))
    ]
    out = Pipeline(parts).forward(stage="val", outputs="part")
    assert out == {"part": [1, 2, 3]}


def test_requesting_an_unknown_output_suggests_a_close_name(pipe):
    with pytest.raises(MissingInputError, match="Did you mean 'scores'") as info:
        pipe.forward(batch=BATCH, stage="val", outputs="score")
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == (None, "score")


def test_requesting_an_output_of_another_stage_names_its_producer(pipe, calls):
    with pytest.raises(MissingInputError, match="produced only by 'mae'") as info:
        pipe.forward(batch=BATCH, stage="train", outputs="mae")
    assert info.value.problems[0].stages == {ExecutionStage.TRAIN}
    assert not calls


def test_missing_batch_key_is_reported_before_any_node_runs(pipe, calls):
    with pytest.raises(MissingInputError, match="input 'target' of node 'mae'") as info:
        pipe.forward(batch={"raw": torch.ones(1, 1)}, stage="val")
    assert {(p.node, p.port) for p in info.value.problems} == {
        ("mae", "target"),
        ("mse", "target"),
    }
    assert "Available: 'features', 'load', 'mse', 'raw', 'scores'." in str(info.value)
    assert not calls


def test_missing_batch_key_suggests_a_close_batch_key():
    @node
    def f(cube):
        return cube

    with pytest.raises(MissingInputError, match="Did you mean 'cubes'"):
        Pipeline([f]).forward(batch={"cubes": 1}, stage="val")


# Plans and their cache ----------------------------------------------------------


def test_plan_lists_nodes_in_order_and_skipped_ones_with_reasons(pipe):
    plan = pipe.plan("val")
    assert plan.nodes == ("load", "features", "scores", "mae", "mse")
    assert plan.skipped == {"augment": "runs in TRAIN, not VAL"}
    assert plan.inputs == ("raw", "target")
    assert "mse" in plan and "augment" not in plan


def test_plan_text_shows_reads_steps_and_skips(pipe):
    text = str(pipe.plan("inference", outputs="scores"))
    assert text.splitlines() == [
        "plan for stage INFERENCE (3 of 6 nodes run; requested: scores)",
        "  reads from the batch: raw",
        "  1. load      (raw: Tensor) -> load",
        "  2. features  (load: Tensor) -> features",
        "  3. scores    (features: Tensor) -> scores",
        "  skipped: augment (runs in TRAIN, not INFERENCE)",
        "  skipped: mae (runs in VAL|TEST, not INFERENCE)",
        "  skipped: mse (runs in TRAIN|VAL|TEST, not INFERENCE)",
    ]


def test_plan_says_why_a_stage_node_is_not_needed(pipe):
    plan = pipe.plan("val", outputs="features")
    assert plan.skipped["mae"] == "not needed for features"


def test_plan_for_given_batch_keys_reports_what_is_missing(pipe):
    with pytest.raises(MissingInputError, match="'target'"):
        pipe.plan("val", batch=["raw"])


def test_plan_is_computed_once_per_stage_request_and_batch_keys(pipe, caplog):
    caplog.set_level(logging.DEBUG, logger="cuvis_dsl")
    for _ in range(3):
        pipe.forward(batch=BATCH, stage="val")
        pipe.forward(batch=dict(BATCH), stage="val")
    pipe.forward(batch=BATCH, stage="val", outputs="scores")
    pipe.forward(batch={"raw": BATCH["raw"]}, stage="val", outputs="scores")
    pipe.forward(batch=BATCH, stage="test")
    planned = [r.getMessage().splitlines()[0] for r in caplog.records]
    assert planned == [
        "plan for stage VAL (5 of 6 nodes run; requested: every output)",
        "plan for stage VAL (3 of 6 nodes run; requested: scores)",
        "plan for stage VAL (3 of 6 nodes run; requested: scores)",
        "plan for stage TEST (5 of 6 nodes run; requested: every output)",
    ]


def test_debug_log_of_a_plan_names_the_skipped_nodes(pipe, caplog):
    caplog.set_level(logging.DEBUG, logger="cuvis_dsl")
    pipe.forward(batch=BATCH, stage="inference")
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.name == "cuvis_dsl"
    assert "skipped: mae (runs in VAL|TEST, not INFERENCE)" in record.getMessage()


def test_nothing_is_logged_above_debug(pipe, caplog):
    caplog.set_level(logging.INFO, logger="cuvis_dsl")
    pipe.forward(batch=BATCH, stage="val")
    assert caplog.records == []


def test_cached_plan_gives_fresh_values_each_call(pipe):
    first = pipe.forward(batch={"raw": torch.ones(1, 1)}, stage="val", outputs="load")
    second = pipe.forward(batch={"raw": torch.zeros(1, 1)}, stage="val", outputs="load")
    assert (first["load"].item(), second["load"].item()) == (1.0, 0.0)


# explain --------------------------------------------------------------------------


def test_explain_a_node_of_another_stage(pipe):
    assert pipe.explain("augment", "val") == (
        "node 'augment' does not run in VAL: its stages are TRAIN.\n"
        "  Fix: node(augment, stages=...) with VAL among the stages."
    )


def test_explain_a_running_node_names_where_each_input_comes_from(pipe):
    assert pipe.explain("features", "train") == (
        "node 'features' runs in TRAIN (step 3 of 5); stages ALWAYS.\n"
        "  load: from 'augment'"
    )
    assert pipe.explain("load", "val").splitlines()[1] == (
        "  raw: from the batch key 'raw'"
    )


def test_explain_a_node_not_needed_for_the_request(pipe):
    assert pipe.explain("mae", "val", outputs="scores") == (
        "node 'mae' does not run in VAL: not needed for scores."
    )


def test_explain_defaults_of_skipped_producers():
    @node(stages="train")
    def mask() -> int:
        return 1

    @node
    def score(mask: int = 0, q: float = 0.5) -> float:
        return mask + q

    text = Pipeline([mask, score]).explain("score", "val")
    assert "mask: default 0 (its producer mask does not run in VAL)" in text
    assert "q: default 0.5 (not in the batch)" in text


def test_explain_unknown_node_suggests_a_name(pipe):
    with pytest.raises(KeyError, match="Did you mean 'scores'"):
        pipe.explain("score", "val")


# Introspection ---------------------------------------------------------------------


def test_pipeline_lists_its_nodes_and_specs(pipe):
    assert sorted(pipe.nodes) == ["augment", "features", "load", "mae", "mse", "scores"]
    assert len(pipe) == 6
    assert pipe["mse"].role == "loss"
    assert pipe.specs["augment"].stages == {ExecutionStage.TRAIN}
    assert {item.name for item in pipe} == set(pipe.nodes)
    with pytest.raises(KeyError, match="Did you mean 'mae'"):
        pipe["maee"]


def test_pipeline_repr_lists_nodes_by_name(pipe):
    lines = repr(pipe).splitlines()
    assert lines[0] == "Pipeline(6 nodes, checks=True)"
    assert lines[1] == "  augment(load: Tensor) -> load stages=TRAIN"


# Run-time port checks --------------------------------------------------------------


def typed_pipe(checks=True):
    ran = []

    @node
    def select(cube: Annotated[Tensor, PortSpec(dtype=F32, shape=(-1, "C"))]) -> Tensor:
        ran.append(cube)
        return cube.sum(-1)

    return Pipeline([select], checks=checks), ran


def test_port_check_rejects_a_bad_value_before_the_body_runs():
    pipe, ran = typed_pipe()
    bad = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(
        PortValidationError, match="input 'cube' of node 'select'"
    ) as info:
        pipe.forward(batch={"cube": bad}, stage="val")
    error = info.value
    assert (error.node, error.port, error.producer) == (
        "select",
        "cube",
        "external input",
    )
    assert error.stage is ExecutionStage.VAL
    assert "Tensor[float64, (2, 3), cpu]" in str(error)
    assert "expected: Tensor[float32, (-1, C)]" in str(error)
    assert str(error).splitlines()[-1].lstrip().startswith("Fix:")
    assert ran == []


def test_port_checks_can_be_switched_off_per_pipeline_attribute_and_call():
    bad = {"cube": torch.ones(2, 3, dtype=torch.float64)}
    pipe, ran = typed_pipe(checks=False)
    pipe.forward(batch=bad, stage="val")
    with pytest.raises(PortValidationError):
        pipe.forward(batch=bad, stage="val", checks=True)
    pipe.checks = True
    with pytest.raises(PortValidationError):
        pipe.forward(batch=bad, stage="val")
    pipe.forward(batch=bad, stage="val", checks=False)
    assert len(ran) == 2


def test_output_port_is_checked_against_its_declaration():
    @node
    def make(x) -> Annotated[Tensor, PortSpec(dtype=torch.int64)]:
        return torch.ones(1)

    with pytest.raises(PortValidationError, match="output 'make'") as info:
        Pipeline([make]).forward(batch={"x": 0}, stage="val")
    assert (info.value.node, info.value.producer) == ("make", "make")
    assert "node 'make' itself" in str(info.value)


def test_port_error_names_the_producing_node():
    @node
    def load() -> Tensor:
        return torch.ones(2, dtype=torch.int64)

    @node
    def use(load: Annotated[Tensor, PortSpec(dtype=F32)]) -> Tensor:
        return load

    with pytest.raises(PortValidationError, match="from: node 'load'") as info:
        Pipeline([load, use]).forward(stage="val")
    assert (info.value.node, info.value.port, info.value.producer) == (
        "use",
        "load",
        "load",
    )


def test_port_validation_error_is_a_value_error_without_a_run_note():
    pipe, _ = typed_pipe()
    with pytest.raises(ValueError) as info:
        pipe.forward(batch={"cube": torch.ones(3)}, stage="val")
    assert getattr(info.value, "__notes__", []) == []


# Errors raised by node bodies ---------------------------------------------------


def failing_pipe():
    @node
    def load() -> Tensor:
        return torch.ones(64, 61)

    @node(stages="train")
    def pca(load: Tensor, rank: int = 3, *, label: str = "x") -> Tensor:
        return load @ torch.ones(60, rank)

    return Pipeline([load, pca])


def test_node_error_keeps_its_type_and_message_and_gains_a_note():
    context = Context(stage="train", epoch=3, batch_idx=17)
    pipe = failing_pipe()
    line = pipe["pca"].__wrapped__.__code__.co_firstlineno
    with pytest.raises(RuntimeError, match="cannot be multiplied") as info:
        pipe.forward(context=context)
    assert type(info.value) is RuntimeError
    (note,) = info.value.__notes__
    assert note.splitlines() == [
        f"while running node 'pca' (tests/test_pipeline.py:{line}) in stage TRAIN, "
        "epoch=3, batch_idx=17",
        "with inputs: load=Tensor[float32, (64, 61), cpu], rank=(default), "
        "label=(default)",
    ]


def test_node_error_traceback_reaches_the_node_body():
    with pytest.raises(RuntimeError) as info:
        failing_pipe().forward(stage="train")
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "pca"
    assert frames[-1].line == "return load @ torch.ones(60, rank)"


def test_note_summarises_inputs_instead_of_printing_them():
    @node
    def boom(big: Tensor, items: list, text: str) -> None:
        raise KeyError("boom")

    batch = {"big": torch.zeros(1000, 1000), "items": [1, 2, 3, 4], "text": "t"}
    with pytest.raises(KeyError) as info:
        Pipeline([boom]).forward(batch=batch, stage="val")
    (note,) = info.value.__notes__
    assert "big=Tensor[float32, (1000, 1000), cpu]" in note
    assert "items=list[1, 2, 3, ...] (len 4)" in note
    assert "text='t'" in note
    assert len(note) < 400


def test_note_of_a_fan_in_node_summarises_the_list():
    parts = [
        node(lambda: 0, name="p0", outputs="part"),
        node(lambda: 1, name="p1", outputs="part"),
    ]
    boom = node(lambda *part: 1 / 0, name="boom", inputs={"part": "part"})
    with pytest.raises(ZeroDivisionError) as info:
        Pipeline([*parts, boom]).forward(stage="val")
    assert "part=list[0, 1] (len 2)" in info.value.__notes__[0]


class FirstLoss(LossNode):
    def forward(self, x: torch.Tensor) -> dict:
        return {"loss": x.sum()}


class SecondLoss(LossNode):
    def forward(self, x: torch.Tensor) -> dict:
        return {"loss": 2 * x.sum()}


def test_same_undeclared_key_from_two_nodes_keeps_both_values():
    pipe = Pipeline([SecondLoss(), FirstLoss()])
    out = pipe.forward(batch={"x": torch.ones(2)}, stage="val")
    # Gathered like a fan-in: ordered by node name, first_loss before second_loss.
    assert [float(v) for v in out["loss"]] == [2.0, 4.0]


def test_forward_by_node_attributes_each_value_to_its_node():
    pipe = Pipeline([SecondLoss(), FirstLoss()])
    by_node = pipe.forward_by_node(batch={"x": torch.ones(2)}, stage="val")
    assert set(by_node) == {"first_loss", "second_loss"}
    assert float(by_node["first_loss"]["loss"]) == 2.0
    assert float(by_node["second_loss"]["loss"]) == 4.0


def test_forward_by_node_lists_only_executed_nodes():
    @node(stages="train")
    def only_train(x: int) -> int:
        return x

    @node
    def always(x: int) -> int:
        return x + 1

    by_node = Pipeline([only_train, always]).forward_by_node(
        batch={"x": 1}, stage="inference"
    )
    assert by_node == {"always": {"always": 2}}


def test_inputs_of_runs_only_upstream_nodes_and_fills_defaults(calls):
    @node
    def double(x: int) -> int:
        calls["double"] += 1
        return 2 * x

    @node(stages="train", outputs="double")
    def jitter(double: int) -> int:
        calls["jitter"] += 1
        return double + 100

    @node
    def shifted(double: int, offset: int = 1) -> int:
        calls["shifted"] += 1
        return double + offset

    pipe = Pipeline([double, jitter, shifted])
    assert pipe.inputs_of("shifted", {"x": 3}, stage="val") == {
        "double": 6,
        "offset": 1,
    }
    assert pipe.inputs_of("shifted", {"x": 3}, stage="train")["double"] == 106
    assert calls == Counter({"double": 2, "jitter": 1})


def test_inputs_of_a_node_outside_the_stage_is_an_error():
    @node(stages="train")
    def only_train(x: int) -> int:
        return x

    with pytest.raises(MissingInputError, match="does not run in VAL"):
        Pipeline([only_train]).inputs_of("only_train", {"x": 1}, stage="val")


def test_run_views_both_gives_forward_and_by_node_from_one_run(calls):
    @node
    def counted(x: Tensor) -> Tensor:
        calls["counted"] += 1
        return x + 1

    pipe = Pipeline([counted, SecondLoss(), FirstLoss()])
    batch = {"x": torch.ones(2)}
    outputs, by_node = pipe.run_views(batch, None, "val", None, None, view="both")
    assert calls["counted"] == 1
    assert set(outputs) == set(pipe.forward(batch=batch, stage="val"))
    assert [float(v) for v in outputs["loss"]] == [2.0, 4.0]
    assert set(by_node) == {"counted", "first_loss", "second_loss"}


def test_typeddict_outputs_and_inputs_run_with_checks_on():
    from typing import TypedDict

    class Stats(TypedDict):
        mean: Tensor

    @node(outputs="stats")
    def stats(x: Tensor) -> Stats:
        return {"mean": x.mean()}

    @node
    def centred(x: Tensor, stats: Stats) -> Tensor:
        return x - stats["mean"]

    out = Pipeline([stats, centred]).forward(
        batch={"x": torch.arange(4.0)}, stage="val", checks=True
    )
    assert torch.equal(out["centred"], torch.tensor([-1.5, -0.5, 0.5, 1.5]))


def test_a_class_form_node_returning_a_tensor_says_to_return_a_dict():
    class Bad(LossNode):
        def forward(self, x: Tensor):
            return x

    with pytest.raises(TypeError, match="returns a dict of them") as info:
        Pipeline([Bad()]).forward(batch={"x": torch.ones(2)}, stage="val")
    assert "Fix: return {'bad': ...}" in str(info.value)


def test_one_name_in_outputs_list_with_a_plain_return_suggests_a_string():
    @node(outputs=["only"])
    def single(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="write outputs='only'"):
        Pipeline([single]).forward(batch={"x": 1}, stage="val")


def test_unknown_stage_error_is_raised_from_the_library_not_enum():
    with pytest.raises(ValueError, match="Did you mean 'val'") as info:
        Pipeline([]).forward(batch={}, stage="vall")
    assert info.value.__suppress_context__
    assert all("enum.py" not in str(entry.path) for entry in info.traceback)
