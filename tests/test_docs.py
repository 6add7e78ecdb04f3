"""The documentation's promises, for README.md and every page in docs/.

- Every Python block marked by a ``<!-- tested -->`` line right before its fence runs as
  written, from the repository root, in a fresh namespace (one test case per block).
- CI runs the README's test command, and the Quickstart shows exactly that command.
- Every page in docs/ is linked from README.md, and every relative link in README.md and
  docs/*.md names a file of the repository (and, with ``#anchor``, one of its headings).
"""

from __future__ import annotations

import re
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # characters: reference material belongs in docs/

MARKER = re.compile(r"^<!--\s*tested\b[^>]*-->\s*$")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=[\"']([^\"']+)[\"']")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    source: str

    @property
    def id(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence`` (the same character, as many)."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and not stripped.strip(fence[0])


def prose_lines(text: str) -> list[str]:
    """The page's lines with fenced code blocks blanked, so line numbers stay true."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
        elif fence is not None:
            if closes(line, fence):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def parse_marked_blocks(page: Path) -> tuple[list[Block], list[str]]:
    """The page's marked Python blocks, and the markers that mark no Python block."""
    lines = page.read_text().splitlines()
    blocks, orphans, fence = [], [], None
    for index, line in enumerate(lines):
        match = FENCE.match(line)
        if fence is not None:
            if closes(line, fence):
                fence = None
            continue
        if match:
            fence = match.group(1)
            continue
        if not MARKER.match(line):
            continue
        opening = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if opening is None or opening.group(2) != "python":
            orphans.append(f"{rel(page)}:{index + 1}")
            continue
        marker_fence, body = opening.group(1), []
        for end in range(index + 2, len(lines)):
            if closes(lines[end], marker_fence):
                break
            body.append(lines[end])
        else:
            orphans.append(f"{rel(page)}:{index + 1} (the block is never closed)")
            continue
        blocks.append(Block(page, index + 2, "\n".join(body) + "\n"))
    return blocks, orphans


BLOCKS = [block for page in PAGES for block in parse_marked_blocks(page)[0]]


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_marked_block_runs_as_written(block, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Padding with the lines above the block makes tracebacks name the page's own lines.
    code = compile("\n" * block.line + block.source, str(block.page), "exec")
    try:
        exec(code, {"__name__": "__docs__"})  # a fresh namespace; blocks assert their results
    except Exception as error:  # any failure of the block fails its test, with the page's line
        pytest.fail(
            f"{block.id}: the block marked <!-- tested --> raised "
            f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}",
            pytrace=False,
        )


def test_the_readme_has_a_tested_example():
    assert any(block.page == README for block in BLOCKS), (
        "README.md has no Python block marked <!-- tested -->"
    )


def test_every_tested_marker_marks_a_python_block():
    orphans = [orphan for page in PAGES for orphan in parse_marked_blocks(page)[1]]
    assert not orphans, (
        "<!-- tested --> must be the line right before a ```python fence; it is not at: "
        + ", ".join(orphans)
    )


def test_ci_runs_the_readme_test_command():
    script = (
        "awk '/<!-- test-command -->/{found=1; next} found && /^```/{if (inblock) exit; "
        "inblock=1; next} inblock{print; exit}' README.md"
    )
    extracted = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert script.split("'")[1] in (ROOT / ".ci" / "run").read_text(), (
        ".ci/run no longer extracts the test command the way this test does"
    )
    quickstart = re.search(r"## Quickstart(.*?)\n## ", README.read_text(), re.S)
    assert quickstart, "README.md has no '## Quickstart' section followed by another section"
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart.group(1), re.S)
    assert commands == ['pip install -e ".[app]" && python train.py', extracted]
    assert "pytest" in extracted


def test_the_readme_stays_short():
    size = len(README.read_text())
    assert size < README_LIMIT, f"README.md has {size} characters; move reference to docs/"


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image on the page, outside code."""
    found = []
    for number, line in enumerate(prose_lines(page.read_text()), start=1):
        line = INLINE_CODE.sub("", line)
        found += [(number, target) for target in LINK.findall(line)]
        found += [(number, target) for target in REFERENCE.findall(line)]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(page.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = unquote(target).partition("#")
    return ((page.parent / path).resolve() if path else page), anchor


def relative_links() -> list[tuple[Path, int, str]]:
    return [
        (page, line, target)
        for page in PAGES
        for line, target in links(page)
        if target and not EXTERNAL.match(target)
    ]


def test_every_relative_link_names_a_file_of_the_repository():
    broken = []
    for page, line, target in relative_links():
        path, _ = resolve(page, target)
        if not path.is_relative_to(ROOT):
            broken.append(f"{rel(page)}:{line}: {target} (outside the repository)")
        elif not path.exists():
            broken.append(f"{rel(page)}:{line}: {target} (no such file)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_anchor_names_a_heading():
    broken = []
    for page, line, target in relative_links():
        path, anchor = resolve(page, target)
        if anchor and path.suffix == ".md" and path.is_file() and path.is_relative_to(ROOT):
            if anchor not in anchors(path):
                broken.append(f"{rel(page)}:{line}: {target} (no heading #{anchor} in {rel(path)})")
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {resolve(README, target)[0] for _, target in links(README)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    unlinked = [rel(page) for page in pages if page.resolve() not in linked]
    assert not unlinked, f"pages in docs/ that README.md does not link: {unlinked}"
