"""The README and the manual in docs/ hold together: every relative link resolves, and every path they name exists.

Why: the README is the front page and docs/ the manual, linked both ways; a page renamed, a heading
reworded or a module moved must fail here rather than leave a reader on a dead link or a stale path.
Offline and fast: the pages are read as text, anchors are computed as GitHub renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# The manual's topics (issue 13): one page each.
MANUAL = ("architecture", "backbones", "cli", "data", "performance", "registry", "tracking", "training")

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# Top-level folders of the repository whose paths the pages name in code spans.
_REPOSITORY_ROOTS = ("pipeline/", "stages/", "tests/", "bench/", "examples/", "docs/", ".ci/")


def _without_code_blocks(text: str) -> str:
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page; a repeated heading gets `-1`, `-2`, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_without_code_blocks(page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The link targets of a page (images too), outside code blocks and code spans."""
    text = _CODE_SPAN.sub("", _without_code_blocks(page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def broken_links(page: Path, root: Path) -> list[str]:
    """The relative links of `page` whose file is missing or outside `root`, or whose anchor is not a heading."""
    broken = []
    for target in links(page):
        if _SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return broken


def missing_paths(page: Path, root: Path) -> list[str]:
    """Repository paths named in the page's code spans (`pipeline/optim/schedules.py`) that do not exist.

    Templates (`tests/<package>/...`) and globs are left out; a path ends at whitespace or at punctuation
    that cannot end a file name here.
    """
    text = _without_code_blocks(page.read_text(encoding="utf-8"))
    missing = []
    for span in _CODE_SPAN.findall(text):
        for token in re.split(r"[\s(),'\"=]+", span):
            token = token.rstrip(".:;")
            if not token.startswith(_REPOSITORY_ROOTS) or any(mark in token for mark in "<>*{}"):
                continue
            if not (root / token).exists():
                missing.append(token)
    return missing


def test_the_manual_has_a_page_per_topic() -> None:
    assert [topic for topic in MANUAL if not (DOCS / f"{topic}.md").is_file()] == []


def test_every_page_of_the_manual_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page, REPO) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_repository_path_named_exists(page: Path) -> None:
    assert missing_paths(page, REPO) == []


def test_slugs_are_githubs() -> None:
    assert slug("Training techniques: every one a switch in `params.yaml`") == (
        "training-techniques-every-one-a-switch-in-paramsyaml"
    )
    assert slug("Team tracking server (PostgreSQL)") == "team-tracking-server-postgresql"
    assert slug("A run's status") == "a-runs-status"
    assert slug("How do I ...") == "how-do-i-"
    assert slug("Why `TFSMLayer`, not `hub.KerasLayer`") == "why-tfsmlayer-not-hubkeraslayer"


def test_the_checks_find_dead_links_missing_anchors_and_stale_paths(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "pipeline" / "optim").mkdir(parents=True)
    (tmp_path / "pipeline" / "optim" / "schedules.py").write_text("", encoding="utf-8")
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Front\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#twice-1) [ok](#front) [web](https://example.org/x.md)\n"
        "[gone](docs/gone.md) [no anchor](docs/page.md#thrice) [outside](../elsewhere.md)\n"
        "`[not a link](docs/gone.md)` and `pipeline/optim/schedules.py` and `pipeline/schedules.py`\n"
        "`tests/<package>/test_<module>.py`, `.venv/bin/python bench/ablation.py --only cosine`\n"
        "```\n[in a block](docs/gone.md) `pipeline/in_a_block.py`\n```\n",
        encoding="utf-8",
    )
    assert broken_links(readme, tmp_path) == [
        "docs/gone.md: no such file",
        "docs/page.md#thrice: no heading #thrice in docs/page.md",
        "../elsewhere.md: no such file",
    ]
    assert missing_paths(readme, tmp_path) == ["docs/gone.md", "pipeline/schedules.py", "bench/ablation.py"]
