"""Every relative link in the README, docs/ and the benchmarks' pages points at a file that
exists, and every ``#anchor`` into a Markdown file at one of its headings (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md",
                *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks" / "measured").rglob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The Markdown without code blocks; inline code kept only where it is a link's text."""
    text = _FENCE.sub("", text)
    # `[`x`](y)`: drop the backticks inside link texts, then inline code elsewhere
    text = re.sub(r"\[`([^`\]]*)`\]", r"[\1]", text)
    return _CODE.sub("", text)


def slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


def test_the_pages_exist() -> None:
    assert ROOT / "README.md" in PAGES and len(PAGES) > 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    dead = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in slugs(file.read_text("utf-8")):
            dead.append(f"{target} (no heading #{anchor})")
    assert not dead, f"{page.relative_to(ROOT)}: dead links: {dead}"


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) `[code](nowhere.md)`\n"
                    "```\n[fenced](nowhere.md)\n```\n[web](https://example.org)\n")
    assert relative_links(page) == ["#top", "missing.md"]
    assert slugs("# A (b, `c`)\n## A (b, `c`)\n") == {"a-b-c", "a-b-c-1"}
