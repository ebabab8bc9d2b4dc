"""The ``cuvis-dsl`` command line, run in a subprocess like a user would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cuvis_dsl._cli import main

PIPES = textwrap.dedent(
    """
    from typing import Annotated

    import torch
    from torch import Tensor

    from cuvis_dsl import Pipeline, PortSpec, metric, node

    Cube = Annotated[Tensor, PortSpec(dtype=torch.float32, shape=("N", "C"))]


    @node
    def scores(cube: Cube) -> Annotated[Tensor, PortSpec(shape=("N",))]:
        return cube.mean(dim=-1)


    @metric
    def best(scores: Tensor) -> Tensor:
        return scores.max()


    @node(stages="inference")
    def jittered(scores: Tensor) -> Tensor:
        return scores + torch.rand(scores.shape)


    @node(stages="train")
    def mask(cube: Cube) -> Tensor:
        return cube > 0


    @node
    def masked(cube: Cube, mask: Tensor) -> Tensor:
        return cube * mask


    good = Pipeline([scores, best])
    flaky = Pipeline([scores, best, jittered])
    broken_nodes = [mask, masked]
    not_a_pipeline = 42
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "my_pipes.py").write_text(PIPES)
    return tmp_path


@pytest.fixture
def in_project(project, monkeypatch):
    """Run `main` in this process, from the project directory."""
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "my_pipes", raising=False)
    yield project
    sys.modules.pop("my_pipes", None)


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cuvis_dsl", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_check_passes_a_correct_pipeline_with_exit_status_0(project):
    result = cli(project, "check", "my_pipes:good", "--max-examples", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checking my_pipes:good: 2 nodes, 5 examples per stage" in result.stdout
    for stage in ("TRAIN", "VAL", "TEST", "INFERENCE"):
        assert f"  {stage:<10} ok" in result.stdout
    assert "all 4 stages passed" in result.stdout


def test_check_reports_the_failing_stage_and_node_with_exit_status_1(project):
    result = cli(project, "check", "my_pipes:flaky", "--max-examples", "5")
    assert result.returncode == 1
    assert "  INFERENCE  FAILED" in result.stdout
    assert "  VAL        ok" in result.stdout
    assert "node 'jittered' returned different values" in result.stdout
    assert "1 of 4 stages failed" in result.stdout


def test_check_reports_nodes_that_cannot_be_wired_with_exit_status_1(project):
    result = cli(project, "check", "my_pipes:broken_nodes", "--stage", "val")
    assert result.returncode == 1
    assert "input 'mask' of node 'masked'" in result.stderr


def test_plan_prints_the_nodes_of_a_stage_and_why_others_are_skipped(project):
    result = cli(project, "plan", "my_pipes:flaky", "--stage", "val")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "plan for stage VAL (2 of 3 nodes run; requested: every output)"
    assert "  skipped: jittered (runs in INFERENCE, not VAL)" in lines


def test_plan_with_outputs_runs_only_what_they_need(project):
    result = cli(
        project, "plan", "my_pipes:flaky", "--stage", "inference", "--outputs", "scores"
    )
    assert result.returncode == 0, result.stderr
    assert "requested: scores" in result.stdout
    assert "skipped: jittered (not needed for scores)" in result.stdout


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "cuvis-dsl"
    if not script.exists():
        pytest.skip("the cuvis-dsl script is not installed in this environment")
    result = subprocess.run(
        [str(script), "plan", "x", "--stage", "val"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "expected MODULE:ATTR" in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("my_pipes", "expected MODULE:ATTR"),
        ("nowhere:good", "no module named 'nowhere'"),
        ("my_pipes:god", "has no attribute 'god'. Did you mean 'good'?"),
        ("my_pipes:not_a_pipeline", "is of type 'int', not a Pipeline"),
    ],
)
def test_usage_errors_exit_with_status_2(in_project, capsys, target, message):
    assert main(["plan", target, "--stage", "val"]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["plan", "my_pipes:good", "--stage", "vall"])
    assert caught.value.code == 2
    assert "Did you mean 'val'?" in capsys.readouterr().err


def test_a_plan_that_cannot_be_made_exits_with_status_1(in_project, capsys):
    assert (
        main(["plan", "my_pipes:good", "--stage", "inference", "--outputs", "best"])
        == 1
    )
    assert (
        "requested output 'best' is produced only by 'best'" in capsys.readouterr().out
    )
