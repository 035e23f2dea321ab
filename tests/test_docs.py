"""`docs/readme/` holds sections of the README one file each: every file must be its README
section as it is now, so that neither drifts from the other."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = sorted((ROOT / "docs" / "readme").glob("*.md"))


def readme_section(readme: str, heading: str) -> str:
    """The README's text from the line `heading` up to the next heading of the same level
    (its trailing blank lines left out)."""
    lines = readme.splitlines(keepends=True)
    level = heading.split(" ", 1)[0] + " "
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    return "".join(lines[start:end]).rstrip("\n") + "\n"


def test_there_are_sections():
    assert len(SECTIONS) >= 4


@pytest.mark.parametrize("path", SECTIONS, ids=lambda p: p.name)
def test_each_docs_file_is_its_readme_section(path):
    text = path.read_text()
    readme = (ROOT / "README.md").read_text()
    assert text == readme_section(readme, text.splitlines()[0]), (
        f"{path.name} differs from its README section: copy the README's section into it"
    )
