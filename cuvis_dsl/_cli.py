"""The ``cuvis-dsl`` command line: check a pipeline, or print its plan.

Exit status: 0 when everything passed, 1 when a check failed or the
pipeline could not be built or planned, 2 for usage errors (a malformed
``MODULE:ATTR``, a module or attribute that does not exist, an unknown
stage).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._errors import DefinitionError, WiringError, did_you_mean
from ._pipeline import Pipeline
from ._stages import CONCRETE_STAGES, ExecutionStage, as_stage

__all__ = ["main"]

FAILED, USAGE = 1, 2


class UsageError(Exception):
    """The command line names something that cannot be used."""


class BuildFailure(Exception):
    """The user's module or pipeline raised while being loaded or built."""


def _stage(text: str) -> ExecutionStage:
    try:
        return as_stage(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cuvis-dsl",
        description="Check a cuvis_dsl pipeline with Hypothesis, or print its plan.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="run the property checks of cuvis_dsl.testing on a pipeline"
    )
    check.add_argument("target", metavar="MODULE:ATTR", help="where the pipeline is")
    check.add_argument(
        "--max-examples", type=int, default=25, help="examples per stage (25)"
    )
    check.add_argument(
        "--stage",
        type=_stage,
        action="append",
        help="check only this stage (repeat for several)",
    )
    plan = commands.add_parser("plan", help="print what a stage runs and skips")
    plan.add_argument("target", metavar="MODULE:ATTR", help="where the pipeline is")
    plan.add_argument("--stage", type=_stage, required=True)
    plan.add_argument("--outputs", help="comma-separated outputs to request")
    return parser


def _split(target: str) -> tuple[str, str]:
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise UsageError(
            f"expected MODULE:ATTR such as 'my_project.pipes:pipeline', got {target!r}"
        )
    return module, attribute


def _import(module: str) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise UsageError(f"no module named {module!r}") from None
        raise BuildFailure(f"importing {module!r} failed: {exc}") from exc
    except (WiringError, DefinitionError) as exc:
        raise BuildFailure(f"importing {module!r} failed:\n{exc}") from exc


def _attribute(module: Any, path: str) -> Any:
    found = module
    for part in path.split("."):
        if not hasattr(found, part):
            names = [n for n in dir(found) if not n.startswith("_")]
            raise UsageError(
                f"{module.__name__!r} has no attribute {path!r}."
                f"{did_you_mean(part, names)}"
            )
        found = getattr(found, part)
    return found


def load(target: str) -> Pipeline | list[Any]:
    """The pipeline (or list of nodes) that ``MODULE:ATTR`` names."""
    module_name, attribute = _split(target)
    found = _attribute(_import(module_name), attribute)
    if isinstance(found, Pipeline):
        return found
    if isinstance(found, (list, tuple)):
        return list(found)
    raise UsageError(
        f"{target} is of type {type(found).__name__!r}, not a Pipeline or a list "
        f"of nodes"
    )


def _built(found: Pipeline | list[Any]) -> Pipeline:
    if isinstance(found, Pipeline):
        return found
    try:
        return Pipeline(found)
    except (WiringError, DefinitionError) as exc:
        raise BuildFailure(
            f"the nodes cannot be built into a pipeline:\n{exc}"
        ) from exc


def _check_stage(
    pipeline: Pipeline, stage: ExecutionStage, max_examples: int
) -> str | None:
    from .testing import check_pipeline

    try:
        check_pipeline(pipeline, stages=[stage], max_examples=max_examples)
    except AssertionError as exc:
        return str(exc)
    except Exception as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        return f"{type(exc).__name__}: {exc}\n{notes}".rstrip()
    return None


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def run_check(
    target: str, stages: Sequence[ExecutionStage] | None, max_examples: int
) -> int:
    pipeline = _built(load(target))
    chosen = list(stages or CONCRETE_STAGES)
    print(
        f"checking {target}: {len(pipeline)} nodes, {max_examples} examples per stage"
    )
    failed = 0
    for stage in chosen:
        problem = _check_stage(pipeline, stage, max_examples)
        print(f"  {stage.name:<10} {'ok' if problem is None else 'FAILED'}")
        if problem is not None:
            failed += 1
            print(_indent(problem))
    if failed:
        print(f"{failed} of {len(chosen)} stages failed")
        return FAILED
    print(f"all {len(chosen)} stages passed")
    return 0


def run_plan(target: str, stage: ExecutionStage, outputs: str | None) -> int:
    pipeline = _built(load(target))
    wanted = [name.strip() for name in outputs.split(",")] if outputs else None
    try:
        plan = pipeline.plan(stage, wanted)
    except WiringError as exc:
        print(exc)
        return FAILED
    print(plan)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Examples
    --------
    >>> from cuvis_dsl._cli import main
    >>> main(["plan", "no_colon_here", "--stage", "val"])  # a usage error
    2
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args.target, args.stage, args.max_examples)
        return run_plan(args.target, args.stage, args.outputs)
    except UsageError as exc:
        print(f"cuvis-dsl: error: {exc}", file=sys.stderr)
        return USAGE
    except BuildFailure as exc:
        print(f"cuvis-dsl: {exc}", file=sys.stderr)
        return FAILED
