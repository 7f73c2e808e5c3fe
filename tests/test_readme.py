"""The docs hold: the generated references in docs/reference.md match the code, every link between
the README and docs/ resolves (file and heading), and the README stays short."""

from __future__ import annotations

import re

import pytest

from imgclf_ray.reference import SECTIONS
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("marker, generate", list(SECTIONS.items()))
def test_reference_sections_are_current(marker, generate):
    text = (REPO / "docs" / "reference.md").read_text()
    found = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
    assert found, f"docs/reference.md lacks the {marker} markers"
    assert found.group(1).strip() == generate().strip(), (
        f"docs/reference.md {marker} is stale: run `imgclf reference --update docs/reference.md`")


def test_readme_names_the_two_commands_and_fits_on_a_few_screens():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "**Contents:**" in readme
    assert len(readme.splitlines()) <= 150


def _anchors(path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_every_python_example_in_the_docs_is_python_that_names_files_that_exist():
    """A newcomer pastes them: each compiles, and a job file one names is in the repository."""
    for page in DOCS:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            compile(block, str(page), "exec")
            for job in re.findall(r"[\"']([\w./-]+\.ya?ml)[\"']", block):
                assert (REPO / job).is_file(), f"{page.name}: {job}"
