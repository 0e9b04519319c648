"""The format-neutral report document: sections of paragraphs, tables, figures and code.

Builders (``sections.py``) turn report.json into a :class:`Document`; ``html.py`` and
``markdown.py`` render it. Every string in a document is plain text: escaping happens once, in the
renderer, so user-supplied text (ensemble names, model ids, paths) can never become markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Align = Literal["left", "right"]


@dataclass(frozen=True)
class Paragraph:
    """Plain text; ``md=False`` keeps it out of the (short) Markdown report, ``html=False``
    out of the HTML page (every block has both flags).

    ``tone`` is "" for body text, or "pass" / "fail" for a gate verdict (shown emphasised).
    """

    text: str
    md: bool = True
    html: bool = True
    tone: Literal["", "pass", "fail"] = ""


@dataclass(frozen=True)
class Table:
    """Rows of pre-formatted cells; ``align`` per column (numbers right-aligned)."""

    headers: list[str]
    rows: list[list[str]]
    align: list[Align]
    caption: str = ""
    md: bool = True
    html: bool = True

    def __post_init__(self) -> None:
        # A ragged table is a builder bug; fail here rather than render broken Markdown.
        width = len(self.headers)
        if len(self.align) != width or any(len(r) != width for r in self.rows):
            raise ValueError(f"table {self.caption!r}: every row needs {width} cells")


@dataclass(frozen=True)
class Figure:
    """An SVG figure: inlined in HTML, written to ``figures/<name>.svg`` for Markdown."""

    name: str  # file stem chosen by fmaudit (never user text)
    svg: str  # the complete SVG file
    caption: str
    md: bool = True
    html: bool = True


@dataclass(frozen=True)
class Code:
    """Preformatted text (the command line)."""

    text: str
    md: bool = True
    html: bool = True


Block = Paragraph | Table | Figure | Code


@dataclass(frozen=True)
class Section:
    """One analysis: an id for anchors, a title, a two-sentence intro and its blocks."""

    id: str
    title: str
    intro: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: list[Section]
    colors: dict[str, str]  # ensemble name -> colour, shared by every figure

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
