"""README and the topic pages under docs/: every relative link resolves, README fits on a screen or two.

A link is a markdown link or image (``[text](target)``, ``![alt](target)``) or an HTML ``src`` /
``href``; external ones (``https:``, ``mailto:``) are left alone. A relative target is resolved from
the folder of the page that holds it. An anchor after ``#`` that points into a markdown file must
name one of its headings, slugged as GitHub does (lower case, punctuation dropped, spaces to ``-``,
``-1``, ``-2`` for repeats).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 15_000
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# the topic pages README's content moved to (docs/workshop.md is the workshop's own page)
TOPICS = ["sandbox", "sae", "labeling", "faithfulness", "mining", "melanoma", "scaling", "running",
          "api", "real-models"]

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
_FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)


def _without_code(text: str) -> str:
    text = _FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def links(text: str) -> list[str]:
    text = _without_code(text)
    return _LINK.findall(text) + _HTML.findall(text)


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) and not target.startswith("//")


def slug(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", path.read_text(encoding="utf-8")),
                              flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if not is_relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    return broken


def test_readme_fits_the_limit():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md has {size} characters (limit {README_LIMIT}): move detail to docs/"


def test_every_topic_page_exists_and_readme_links_it():
    readme_links = {t.split("#")[0] for t in links(README.read_text(encoding="utf-8"))}
    for topic in TOPICS:
        assert (ROOT / "docs" / f"{topic}.md").is_file(), f"docs/{topic}.md is missing"
        assert f"docs/{topic}.md" in readme_links, f"README does not link docs/{topic}.md"


@pytest.mark.parametrize("topic", TOPICS)
def test_topic_page_opens_with_what_the_reader_learns(topic):
    """A title, then a paragraph (not a heading, table or list) before the first section."""
    text = (ROOT / "docs" / f"{topic}.md").read_text(encoding="utf-8")
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("# "), f"docs/{topic}.md does not open with a title"
    intro = blocks[1]
    assert not intro.startswith(("#", "|", "-", "*", "```")), f"docs/{topic}.md: no opening paragraph"
    assert 1 <= intro.count(". ") + intro.endswith(".") <= 3 and len(intro) >= 80


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    found = [t for t in links(page.read_text(encoding="utf-8")) if is_relative(t)]
    if page == README:
        assert found, "no relative link found in README (the parser is broken?)"
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} has broken links: {broken}"


def test_the_checker_notices_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "there.md").write_text("# Top\n\n## A `code` heading: yes (1)\n\n## Top\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("[ok](../there.md) [ok](../there.md#a-code-heading-yes-1) [ok](../there.md#top-1) "
                    "![img](../missing.png) [bad](../there.md#nope) [ext](https://example.org/x) "
                    "`[in code](nowhere.md)` [self](#) [self](#top)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        broken = broken_links(page)
    finally:
        ROOT = saved
    assert broken == ["../missing.png (no such file)", "../there.md#nope (no heading #nope in there.md)",
                      "#top (no heading #top in docs/page.md)"]
    assert slug("On a GPU: NVIDIA H200 (2026-11-26)") == "on-a-gpu-nvidia-h200-2026-11-26"
    assert slug("Feature extraction overhead (`benchmarks/features.py`)") == \
        "feature-extraction-overhead-benchmarksfeaturespy"
