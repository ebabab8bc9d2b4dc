"""The documentation covers the public API, and every linked page exists."""

import re
from pathlib import Path

import cuvis_dsl
import cuvis_dsl.testing

ROOT = Path(__file__).resolve().parents[1]


def documented_names() -> set[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return set(re.findall(r"^### `(\w+)`", text, flags=re.MULTILINE))


def test_every_public_name_has_an_api_entry():
    public = set(cuvis_dsl.__all__) | set(cuvis_dsl.testing.__all__)
    assert public - documented_names() == set()


def test_api_reference_lists_no_name_that_is_not_public():
    public = set(cuvis_dsl.__all__) | set(cuvis_dsl.testing.__all__)
    assert documented_names() - public == set()


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert broken == []


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1]
    commands = [line for line in block.split("```", 1)[0].splitlines() if line]
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
