"""The README and the guides under docs/ link only to files that exist in the repository.

The README is kept short and points into docs/ for everything else, so a moved or renamed guide would leave links
that GitHub renders as 404s; these checks read the Markdown as text (no heavy imports) and run in milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250

# `[text](target)` and `![alt](target)`, with an optional "title"; link text may wrap onto the next line.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def relative_targets(text: str) -> list[str]:
    """Link targets that name a file in the repository, anchors stripped; code is not prose, so it is skipped."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = []
    for target in LINK.findall(prose):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_pattern_reads_what_the_docs_use():
    text = ("see [a guide](docs/sft.md#measured), ![img](docs/x.png \"title\"), [wrapped\ntext](a.md),\n"
            "[web](https://example.org), [mail](mailto:a@b.c), [here](#anchor), `[code](not-a-link.md)`\n"
            "```\n[fenced](not-a-link-either.md)\n```\n")
    assert relative_targets(text) == ["docs/sft.md", "docs/x.png", "a.md"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path):
    missing = [target for target in relative_targets(path.read_text(encoding="utf-8"))
               if not (path.parent / target).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_text_points_outside_the_repository(path: Path):
    # A path beside the checkout (where a developer keeps benchmark copies) means nothing to a reader of the docs.
    assert "../shared" not in path.read_text(encoding="utf-8")


def test_readme_stays_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move long material into a guide under docs/"
