"""The README's generated references match the code."""

from __future__ import annotations

import re

import pytest

from imgclf_ray.reference import SECTIONS
from tests.conftest import REPO


@pytest.mark.parametrize("marker, generate", list(SECTIONS.items()))
def test_reference_sections_are_current(marker, generate):
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", readme, re.S)
    assert found, f"README lacks the {marker} markers"
    assert found.group(1).strip() == generate().strip(), (
        f"README {marker} is stale: run `imgclf reference --update README.md`")


def test_readme_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
