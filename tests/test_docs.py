"""The design record, doc/design.md, and the citations of it.

The code, the tests and the documents cite a section of doc/design.md as
``(design: SLUG)`` or ``(design: SLUG, SLUG)``, SLUG being the GitHub
anchor of its heading.  Nothing in the repository may point to files
outside it (the old decision list and specifications were kept beside
the checkout, where a contributor or a project that vendors ``ucspi/``
cannot follow them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "doc" / "design.md"

#: where citations are looked for
CITING = ["ucspi", "tests", "bench", "tools", "man", "README.md", "INSTALL",
          "ARCHITECTURE.md", "tcpserver.py", "tcprules.py", "tcprulescheck.py", "rblsmtpd.py"]
#: where no pointer outside the repository may be
SELF_CONTAINED = ["ucspi", "tests", "README.md", "ARCHITECTURE.md"]
#: pointers to files outside the repository (spelt so that this file
#: does not match itself)
OUTSIDE = ["DECI" + "SIONS", "../" + "shared", "/work/" + "shared",
           "spec " + "core", "spec " + "subsystems", "core " + "spec", "subsystems " + "spec"]

CITATION = re.compile(r"\bdesign:")
SLUGS = re.compile(r"\bdesign: ([a-z0-9-]+(?:, [a-z0-9-]+)*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than
    ``-`` and ``_`` dropped, spaces as ``-``."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings() -> List[str]:
    found = []
    fenced = False
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchors() -> Dict[str, str]:
    return {slug(h): h for h in headings()}


def files(names: List[str]) -> Iterator[Path]:
    for name in names:
        path = ROOT / name
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and "__pycache__" not in sub.parts \
                        and sub.suffix in (".py", ".md", ".1", ".txt", ""):
                    yield sub
        elif path.is_file():
            yield path


THIS = Path(__file__).resolve()


def lines(names: List[str]) -> Iterator[Tuple[Path, int, str]]:
    for path in files(names):
        if path.resolve() == THIS:   # its own examples are not citations
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            yield path, number, line


def test_headings_have_distinct_anchors() -> None:
    seen: Dict[str, str] = {}
    for heading in headings():
        key = slug(heading)
        assert key not in seen, f"{heading!r} and {seen[key]!r} have the same anchor"
        seen[key] = heading


def test_links_inside_the_record_resolve() -> None:
    known = anchors()
    text = DESIGN.read_text(encoding="utf-8")
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the table of decisions links to the sections"
    assert sorted(set(links) - set(known)) == []


@pytest.mark.parametrize("anchor", ["one-event-loop", "fork-only-where-needed",
                                    "exit-codes", "signals", "mysql-rules",
                                    "tls-handshakes-and-slots", "one-admission-point"])
def test_the_central_sections_exist(anchor: str) -> None:
    assert anchor in anchors()


def test_no_pointer_outside_the_repository() -> None:
    bad = [f"{path.relative_to(ROOT)}:{number}: {word}"
           for path, number, line in lines(SELF_CONTAINED)
           for word in OUTSIDE if word in line]
    assert bad == []


def test_citations_name_existing_sections() -> None:
    known = anchors()
    bad = []
    count = 0
    for path, number, line in lines(CITING):
        where = f"{path.relative_to(ROOT)}:{number}"
        for hit in CITATION.finditer(line):
            match = SLUGS.match(line, hit.start())
            if match is None:
                bad.append(f"{where}: a citation must name its sections on the same line")
                continue
            for name in match.group(1).split(", "):
                count += 1
                if name not in known:
                    bad.append(f"{where}: no section {name!r} in doc/design.md")
    assert bad == []
    assert count > 50, "the code cites the design record"


def test_slug() -> None:
    assert slug("Accept errors") == "accept-errors"
    assert slug("Pure core thin shell") == "pure-core-thin-shell"
    assert slug("Plugins, MySQL: DNS") == "plugins-mysql-dns"
