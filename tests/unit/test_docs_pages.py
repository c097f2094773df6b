"""README.md and docs/: the set-up commands stay, every page is linked, every link resolves, nothing local.

The two commands are relied on literally (CI runs them, users paste them), so they must stay in the README
exactly as written here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/keywatch demo --duration 30"
TESTS = "bash tests/run"
README_MAX_LINES = 220
# Pages others write: linked from the README, but not required to exist in every checkout.
EXTERNAL_PAGES = {"architecture.md"}
# Paths and names that belong to one machine, never to the product.
LOCAL = re.compile(r"/work/|/home/[a-z]|/Users/|/tmp/[A-Za-z0-9_.-]+/|\b[a-z0-9-]+\.(?:local|internal\.lan)\b")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#+\s+(.+)$", text, flags=re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def test_readme_keeps_the_two_setup_commands_literally():
    text = README.read_text(encoding="utf-8")
    assert DEMO in text.splitlines(), "the demo command must stay in README.md, on a line of its own"
    assert TESTS in text.splitlines(), "the test command must stay in README.md, on a line of its own"


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= README_MAX_LINES


def test_readme_links_every_docs_page():
    linked = {Path(t.split("#")[0]).name for t in links(README) if t.startswith("docs/")}
    missing = sorted({p.name for p in DOCS.glob("*.md")} - linked)
    assert not missing, f"README.md does not link: {missing}"
    assert "architecture.md" in linked


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            if dest.name not in EXTERNAL_PAGES:
                broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_specific_path(page: Path):
    found = sorted(set(LOCAL.findall(page.read_text(encoding="utf-8"))))
    assert not found, f"{page.name} names paths or hosts of one machine: {found}"
