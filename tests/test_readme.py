"""The README and the pages under docs/: every setting documented, the commands CI and newcomers
rely on, a README short enough to read to the end, and no relative link that leads nowhere."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
DOCS = ROOT / "docs"
README = README_PATH.read_text()
SETTINGS_PAGE = DOCS / "settings.md"
METHOD_PAGE = DOCS / "method.md"
PAGES = [README_PATH, *sorted(DOCS.glob("*.md"))]

# Inline links and images: [text](target) and ![alt](target), the target up to a space or ")".
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+).*?\1", re.S)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are code, not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, and -1, -2
    ... on repeats."""
    seen: Counter[str] = Counter()
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


def _relative_links(path: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(_prose(path.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:
    ]


def test_the_pages_are_there() -> None:
    assert len(PAGES) > 1, "docs/ holds no pages"
    assert SETTINGS_PAGE.is_file()
    assert METHOD_PAGE.is_file()


def test_every_setting_is_in_the_settings_table() -> None:
    page = SETTINGS_PAGE.read_text()
    missing = [
        f"CARTL_{n.upper()}"
        for n in Settings.model_fields
        if f"| `CARTL_{n.upper()}` |" not in page
    ]
    assert not missing, f"the settings table in docs/settings.md lacks {missing}"


def test_the_two_setup_commands_and_the_ci_test_command_agree() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "cartl serve" in README
    assert "python -m pytest" in README
    assert ci.rstrip().endswith("python -m pytest")
    # The set-up's two commands, as a newcomer pastes them: one serves on the embedded defaults,
    # one passes the tests.
    commands = [
        line.split("#")[0].strip()
        for line in README.split("```bash", 1)[1].split("```", 1)[0].splitlines()
        if line.strip()
    ]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/cartl serve",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
    ]


def test_the_readme_is_short_enough_to_read_to_the_end() -> None:
    lines = len(README.splitlines())
    assert lines <= 350, f"README.md has {lines} lines; move reference material into docs/"


def test_the_readme_links_the_method() -> None:
    assert "docs/method.md" in _relative_links(README_PATH)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if resolved != ROOT and ROOT not in resolved.parents:
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no {os.path.relpath(resolved, ROOT)})")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)} links to nothing: {broken}"


def test_the_anchor_rule_matches_githubs() -> None:
    page = ROOT / "docs" / "service.md"
    assert "in-a-browser-the-dashboard-at-ui" in _anchors(page)
    assert "where-this-implementation-follows-the-release-and-where-it-does-not" in _anchors(
        METHOD_PAGE
    )


def test_no_reference_to_a_method_document_outside_the_repository() -> None:
    for path in [*PAGES, ROOT / "cartl_core" / "config.py"]:
        assert "CARTL_METHOD.md" not in path.read_text(), path
