"""Wiring by name: producers, stage variants, rebinding, fan-in and build errors."""

import itertools

import pytest
import torch
from torch import Tensor

from cuvis_dsl import (
    CycleError,
    DuplicateOutputError,
    ExecutionStage,
    MissingInputError,
    Pipeline,
    SpecMismatchError,
    StageSet,
    WiringError,
    node,
)
from cuvis_dsl._wiring import Wiring, find_cycle

TRAIN, VAL, TEST, INFERENCE = (
    ExecutionStage.TRAIN,
    ExecutionStage.VAL,
    ExecutionStage.TEST,
    ExecutionStage.INFERENCE,
)


def const(name: str, value: object, output: str | None = None, stages="always"):
    """A node without inputs that returns ``value``."""
    return node(lambda: value, name=name, outputs=output or name, stages=stages)


def passthrough(name: str, reads: str, output: str, stages="always"):
    return node(
        lambda v: v, name=name, inputs={"v": reads}, outputs=output, stages=stages
    )


# Plain wiring -----------------------------------------------------------------


def test_input_is_fed_by_the_output_of_the_same_name():
    @node
    def load() -> Tensor:
        return torch.ones(2)

    @node
    def double(load: Tensor) -> Tensor:
        return load * 2

    out = Pipeline([double, load]).forward(stage="val")
    assert torch.equal(out["double"], torch.full((2,), 2.0))


def test_input_without_producer_reads_the_batch_key():
    @node
    def double(x: Tensor) -> Tensor:
        return x * 2

    out = Pipeline([double]).forward(batch={"x": torch.ones(1)}, stage="test")
    assert out["double"].item() == 2.0


def test_renamed_input_reads_the_renamed_wire():
    @node(inputs={"x": "raw"})
    def double(x):
        return x * 2

    assert Pipeline([double]).forward(batch={"raw": 4}, stage="val") == {"double": 8}


# Stage variants and duplicates ----------------------------------------------


def test_producers_with_disjoint_stages_are_stage_variants():
    variants = [
        const("features_train", "train", output="features", stages="train"),
        const("features_eval", "eval", output="features", stages="val|test|inference"),
        passthrough("head", "features", "head"),
    ]
    pipe = Pipeline(variants)
    assert pipe.forward(stage="train")["head"] == "train"
    for stage in ("val", "test", "inference"):
        assert pipe.forward(stage=stage)["head"] == "eval"


def test_overlapping_producers_are_a_duplicate_error_naming_both():
    nodes = [
        const("first", 1, output="features", stages="train|val"),
        const("second", 2, output="features", stages="val|test"),
        passthrough("head", "features", "head", stages="val"),
    ]
    with pytest.raises(
        DuplicateOutputError, match="'features' has 2 producers"
    ) as info:
        Pipeline(nodes)
    (problem,) = info.value.problems
    assert (problem.kind, problem.node, problem.port) == ("duplicate", "head", "v")
    assert problem.stages == {VAL}
    message = str(info.value)
    assert "Producers: 'first' = test_wiring.const.<locals>.<lambda>" in message
    assert "'second' = test_wiring.const.<locals>.<lambda>" in message
    assert "Fix: give the producers disjoint stages" in message


def test_duplicate_producers_without_consumers_are_allowed():
    pipe = Pipeline([const("a", 1, output="x"), const("b", 2, output="x")])
    assert pipe.forward(stage="val") == {"x": [1, 2]}


def test_two_nodes_with_one_name_are_rejected():
    first = const("same", 1, output="one")
    second = const("same", 2, output="two")
    with pytest.raises(WiringError, match="two nodes are named 'same'") as info:
        Pipeline([first, second])
    assert info.value.problems[0].node == "same"
    assert info.value.nodes == ("same",)


# Rebinding: x = f(x) ------------------------------------------------------------


def rebinder(name="augment", wire="x", stages="train", factor=10):
    return node(
        lambda x: x * factor, name=name, inputs={"x": wire}, outputs=wire, stages=stages
    )


def test_rebinding_is_seen_in_its_stages_and_the_original_elsewhere():
    pipe = Pipeline([rebinder(), passthrough("features", "x", "features")])
    train = pipe.forward(batch={"x": 1}, stage="train")
    val = pipe.forward(batch={"x": 1}, stage="val")
    assert train == {"x": 10, "features": 10}
    assert val == {"features": 1}


def test_rebinder_reads_an_internal_producer():
    pipe = Pipeline([const("x", 2), rebinder(), passthrough("f", "x", "f")])
    assert pipe.forward(stage="train")["f"] == 20
    assert pipe.forward(stage="val")["f"] == 2


def test_requested_rebound_name_gives_the_value_of_the_stage():
    pipe = Pipeline([const("x", 2), rebinder()])
    assert pipe.forward(stage="train", outputs="x") == {"x": 20}
    assert pipe.forward(stage="inference", outputs="x") == {"x": 2}


def test_two_rebinders_in_one_stage_are_an_error():
    first, second = rebinder("aug_a"), rebinder("aug_b", stages="train|val")
    with pytest.raises(WiringError, match="2 nodes rebind 'x'") as info:
        Pipeline([first, second])
    (problem,) = info.value.problems
    assert (problem.kind, problem.port, problem.stages) == ("rebinding", "x", {TRAIN})
    assert "their order would be a guess" in str(info.value)
    assert "Fix: chain them explicitly" in str(info.value)


def test_rebinders_in_disjoint_stages_are_allowed():
    pipe = Pipeline(
        [rebinder("aug_a", factor=10), rebinder("aug_b", stages="val", factor=100)]
    )
    assert pipe.forward(batch={"x": 1}, stage="train") == {"x": 10}
    assert pipe.forward(batch={"x": 1}, stage="val") == {"x": 100}


def test_rebinder_without_upstream_value_is_a_missing_input_naming_it():
    pipe = Pipeline([rebinder()])
    with pytest.raises(MissingInputError, match="rebinds 'x', but nothing upstream"):
        pipe.forward(stage="train")


def test_batch_key_that_a_node_produces_is_an_error_not_an_override():
    pipe = Pipeline([const("x", 2), passthrough("f", "x", "f")])
    with pytest.raises(WiringError, match="batch key 'x' is also an output") as info:
        pipe.forward(batch={"x": 5}, stage="val")
    (problem,) = info.value.problems
    assert (problem.kind, problem.node, problem.port) == ("collision", "x", "x")
    assert "read 'x' and produce no other 'x'" in str(info.value)


def test_produced_name_is_not_read_from_the_batch_even_where_its_producer_skips():
    noise = const("noise", 1, stages="train")
    score = node(lambda noise=0: noise, name="score")
    with pytest.raises(WiringError, match="batch key 'noise' is also an output"):
        Pipeline([noise, score]).forward(batch={"noise": 5}, stage="val")


def test_batch_key_of_a_rebound_name_feeds_the_rebinder():
    pipe = Pipeline([rebinder(), passthrough("f", "x", "f")])
    assert pipe.forward(batch={"x": 3}, stage="train")["f"] == 30


# Fan-in ----------------------------------------------------------------------------


def fan_in(name="monitor", wire="part"):
    return node(lambda *parts: list(parts), name=name, inputs={"parts": wire})


def test_variadic_port_gathers_producers_in_node_name_order():
    producers = [const(n, n, output="part") for n in ("c", "a", "b")]
    for order in itertools.permutations(producers):
        out = Pipeline([fan_in(), *order]).forward(stage="val")
        assert out["monitor"] == ["a", "b", "c"]


def test_variadic_port_gathers_only_producers_of_the_stage():
    producers = [
        const("a", "a", output="part", stages="train"),
        const("b", "b", output="part"),
        const("c", "c", output="part", stages="val"),
    ]
    pipe = Pipeline([fan_in(), *producers])
    assert pipe.forward(stage="train")["monitor"] == ["a", "b"]
    assert pipe.forward(stage="val")["monitor"] == ["b", "c"]
    assert pipe.forward(stage="test")["monitor"] == ["b"]


def test_variadic_port_with_one_non_variadic_consumer_is_a_duplicate_error():
    producers = [const(n, n, output="part") for n in ("a", "b")]
    with pytest.raises(DuplicateOutputError) as info:
        Pipeline([fan_in(), passthrough("single", "part", "single"), *producers])
    assert [p.node for p in info.value.problems] == ["single"]


def test_variadic_port_reads_one_batch_value_as_a_list_of_one():
    assert Pipeline([fan_in()]).forward(batch={"part": 7}, stage="val") == {
        "monitor": [7]
    }


# Cycles -------------------------------------------------------------------------


def test_two_node_loop_is_a_cycle_error_in_order():
    a = passthrough("a", "b", "a")
    b = passthrough("b", "a", "b")
    with pytest.raises(CycleError, match="a -> b -> a") as info:
        Pipeline([b, a])
    (problem,) = info.value.problems
    assert (problem.kind, problem.node) == ("cycle", "a")
    assert problem.stages == StageSet("always")


def test_cycle_in_only_one_stage_names_that_stage():
    a = passthrough("a", "b", "a")
    b = passthrough("b", "a", "b", stages="train")
    c = const("a_seed", 1, output="b", stages="val|test|inference")
    with pytest.raises(CycleError, match="cycle in TRAIN: a -> b -> a") as info:
        Pipeline([a, b, c])
    assert info.value.stages == {TRAIN}


def test_find_cycle_is_iterative_on_deep_graphs():
    depth = 5000
    graph = {f"n{i}": [f"n{i + 1}"] for i in range(depth)}
    graph[f"n{depth}"] = ["n0"]
    cycle = find_cycle(graph)
    assert cycle is not None and len(cycle) == depth + 1
    del graph[f"n{depth}"]
    assert find_cycle(graph) is None


# Stage gaps -----------------------------------------------------------------------


def test_input_produced_only_in_other_stages_is_a_gap_in_those_stages():
    nodes = [const("noise", 1, stages="train"), passthrough("snr", "noise", "snr")]
    with pytest.raises(MissingInputError, match="is produced only by 'noise'") as info:
        Pipeline(nodes)
    (problem,) = info.value.problems
    assert (problem.node, problem.port) == ("snr", "v")
    assert problem.stages == {VAL, TEST, INFERENCE}
    message = str(info.value)
    assert "nothing provides it in VAL, TEST, INFERENCE" in message
    assert "Fix: give port 'v' of 'snr' a default (v: ... | None = None)" in message
    assert "restrict the consumer (node(snr, stages='train'))" in message


def test_consumer_restricted_to_its_producers_stages_has_no_gap():
    nodes = [
        const("noise", 1, stages="train"),
        passthrough("snr", "noise", "snr", stages="train"),
    ]
    assert Pipeline(nodes).forward(stage="train") == {"noise": 1, "snr": 1}


def test_optional_input_with_skipped_producer_gets_its_default():
    @node
    def score(noise: int = 5) -> int:
        return noise

    pipe = Pipeline([const("noise", 1, stages="train"), score])
    assert pipe.forward(stage="train")["score"] == 1
    assert pipe.forward(stage="val") == {"score": 5}


# Spec mismatch ----------------------------------------------------------------------


def test_declared_types_that_cannot_meet_are_a_spec_error():
    @node
    def label() -> str:
        return "a"

    @node
    def use(label: Tensor) -> Tensor:
        return label

    with pytest.raises(SpecMismatchError, match="type str cannot feed Tensor") as info:
        Pipeline([label, use])
    (problem,) = info.value.problems
    assert (problem.kind, problem.node, problem.port) == ("spec", "use", "label")
    assert "Producer declares str; consumer expects Tensor" in str(info.value)


# One report --------------------------------------------------------------------------


def broken_nodes():
    @node
    def label() -> str:
        return "a"

    @node
    def use(label: Tensor) -> Tensor:
        return label

    return [
        label,
        use,
        const("noise", 1, stages="train"),
        passthrough("snr", "noise", "snr"),
        const("f1", 1, output="features", stages="train|val"),
        const("f2", 2, output="features", stages="train"),
        passthrough("head", "features", "head", stages="train"),
        passthrough("a", "b", "a"),
        passthrough("b", "a", "b"),
    ]


def test_every_problem_of_every_stage_is_in_one_error():
    with pytest.raises(WiringError) as info:
        Pipeline(broken_nodes())
    error = info.value
    assert type(error) is WiringError
    assert isinstance(error, ValueError)
    kinds = {(p.kind, p.node, p.port, p.stages) for p in error.problems}
    assert kinds == {
        ("cycle", "a", None, StageSet("always")),
        ("spec", "use", "label", StageSet("always")),
        ("missing", "snr", "v", StageSet("val|test|inference")),
        ("duplicate", "head", "v", StageSet("train")),
    }
    assert str(error).startswith("pipeline cannot be wired (4 problems):")
    # The cycle a -> b -> a names both of its nodes.
    assert set(error.nodes) == {"a", "b", "use", "snr", "head"}


def test_wiring_does_not_depend_on_the_node_list_order():
    reports = set()
    for seed in range(6):
        nodes = broken_nodes()
        order = sorted(nodes, key=lambda n: hash((seed, n.name)))
        with pytest.raises(WiringError) as info:
            Pipeline(order)
        reports.add(str(info.value).replace(" ", ""))
    assert len(reports) == 1


def test_plans_do_not_depend_on_the_node_list_order():
    nodes = [
        const("load", 1, output="cube"),
        passthrough("features", "cube", "features"),
        const("noise", 2, stages="train"),
        node(lambda features, noise=0: features + noise, name="score"),
        node(lambda *features: sum(features), name="total"),
    ]
    seen = set()
    for order in itertools.permutations(nodes):
        pipe = Pipeline(list(order))
        seen.add(
            (
                str(pipe.plan("train")),
                str(pipe.plan("val")),
                tuple(pipe.forward(stage="train").items()),
            )
        )
    assert len(seen) == 1


def test_feeds_name_their_producers_per_stage():
    nodes = [const("noise", 1, stages="train"), node(lambda noise=0: noise, name="s")]
    wiring = Wiring([item.spec for item in nodes])
    (train_feed,) = wiring.stages[TRAIN].feeds["s"]
    (val_feed,) = wiring.stages[VAL].feeds["s"]
    assert train_feed.producers == (("noise", "noise"),)
    assert (val_feed.producers, val_feed.skipped) == ((), ("noise",))
