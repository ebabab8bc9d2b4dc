"""Per-call overhead of ``Pipeline.forward`` against handwritten calls.

Every case times the same node functions twice in the same run: called
by hand in a plain Python loop, and through a pipeline (run-time checks off
and on). Ratios are pipeline time / handwritten time, so the machine's
speed cancels out. Run with ``python benchmarks/overhead.py``; add
``--quick`` for fewer repetitions.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections.abc import Callable
from typing import Annotated

import torch
from torch import Tensor

from cuvis_dsl import ExecutionStage, Pipeline, PortSpec, node

Square = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=("N", "C"))]


def add_one(x: Square) -> Square:
    return x + 1


def total(*parts: Square) -> Square:
    return torch.stack(parts).sum(dim=0)


def best_of(calls: dict[str, Callable[[], object]], repeat: int, number: int) -> dict:
    """Best time of one call of each, in microseconds.

    The calls take turns within every repeat, so a slow spell of the
    machine hits all of them alike instead of skewing one ratio.
    """
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for name, call in calls.items():
            seconds = timeit.timeit(call, number=number)
            best[name] = min(best[name], seconds / number * 1e6)
    return best


def chain(n: int) -> tuple[Pipeline, Callable[[Tensor], Tensor]]:
    nodes = [
        node(add_one, name=f"step{i}", inputs={"x": f"v{i}"}, outputs=f"v{i + 1}")
        for i in range(n)
    ]
    functions = [add_one] * n

    def by_hand(x: Tensor) -> Tensor:
        for function in functions:
            x = function(x)
        return x

    return Pipeline(nodes), by_hand


def diamond(n: int) -> tuple[Pipeline, Callable[[Tensor], Tensor]]:
    source = node(add_one, name="source", inputs={"x": "v0"}, outputs="s")
    branches = [
        node(add_one, name=f"branch{i}", inputs={"x": "s"}, outputs="b")
        for i in range(n)
    ]
    fan_in = node(total, name="total", inputs={"parts": "b"})

    def by_hand(x: Tensor) -> Tensor:
        s = add_one(x)
        return total(*[add_one(s) for _ in range(n)])

    return Pipeline([source, *branches, fan_in]), by_hand


def stage_variant(n: int) -> tuple[Pipeline, Callable[[Tensor], Tensor]]:
    main = node(add_one, name="main", inputs={"x": "v0"}, outputs="y")
    side = [
        node(
            add_one,
            name=f"side{i}",
            stages=ExecutionStage.TRAIN,
            inputs={"x": "y"},
            outputs=f"side{i}",
        )
        for i in range(n)
    ]
    return Pipeline([main, *side]), add_one


CASES = {"chain": chain, "diamond": diamond, "stage variant": stage_variant}


def measure(kind: str, n: int, repeat: int) -> dict[str, float]:
    pipe, by_hand = CASES[kind](n)
    x = torch.zeros(4, 4)
    batch = {"v0": x}
    stage = "inference"
    number = max(20, 4000 // max(n, 1))
    pipe.forward(batch=batch, stage=stage)
    times = best_of(
        {
            "hand": lambda: by_hand(x),
            "off": lambda: pipe.forward(batch=batch, stage=stage, checks=False),
            "on": lambda: pipe.forward(batch=batch, stage=stage, checks=True),
        },
        repeat,
        number,
    )
    ran = len(pipe.plan(stage, batch=batch).nodes)
    return {**times, "ran": ran, "nodes": len(pipe)}


def print_table(repeat: int) -> None:
    print(
        f"{'case':<14}{'N':>5}{'nodes run':>10}{'hand us':>10}"
        f"{'off us':>10}{'ratio':>7}{'on us':>10}{'ratio':>7}"
        f"{'+us/node off':>14}{'+us/node on':>13}"
    )
    for kind in CASES:
        for n in (1, 10, 50, 200):
            r = measure(kind, n, repeat)
            per_off = (r["off"] - r["hand"]) / r["nodes"]
            per_on = (r["on"] - r["hand"]) / r["nodes"]
            print(
                f"{kind:<14}{n:>5}{r['ran']:>10}{r['hand']:>10.1f}"
                f"{r['off']:>10.1f}{r['off'] / r['hand']:>7.2f}"
                f"{r['on']:>10.1f}{r['on'] / r['hand']:>7.2f}"
                f"{per_off:>14.2f}{per_on:>13.2f}"
            )


def scale() -> None:
    """Building and planning a 10,000-node pipeline; running a 5,000-deep chain."""
    for n in (2_500, 10_000):
        started = time.perf_counter()
        nodes = [
            node(add_one, name=f"step{i}", inputs={"x": f"v{i}"}, outputs=f"v{i + 1}")
            for i in range(n)
        ]
        declared = time.perf_counter()
        pipe = Pipeline(nodes)
        built = time.perf_counter()
        pipe.plan("inference")
        planned = time.perf_counter()
        print(
            f"chain of {n:>6} nodes: declare {declared - started:6.3f} s, "
            f"build {built - declared:6.3f} s, plan {planned - built:6.3f} s, "
            f"build + plan {planned - declared:6.3f} s"
        )
    pipe, by_hand = chain(5_000)
    x = torch.zeros(4, 4)
    started = time.perf_counter()
    result = pipe.forward(batch={"v0": x}, stage="inference", outputs="v5000")
    elapsed = time.perf_counter() - started
    assert torch.equal(result["v5000"], by_hand(x))
    print(
        f"5,000-deep chain: first forward (plan included) {elapsed:.3f} s, "
        f"recursion limit {sys.getrecursionlimit()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"1 torch thread; best of {3 if args.quick else 7} repeats\n"
    )
    print_table(3 if args.quick else 7)
    print()
    scale()


if __name__ == "__main__":
    main()
