"""Document -> GitHub-flavoured Markdown short enough for a PR comment or a CI job summary.

Only blocks marked ``md`` are written: the summary, the key table of each section, and the
figures as relative links to ``figures/<name>.svg``. User text is escaped by :func:`md_escape`.
"""

from __future__ import annotations

import re

from tabulate import tabulate

from fmaudit.report.document import Block, Code, Document, Figure, Paragraph, Section, Table
from fmaudit.report.values import visible

# ASCII punctuation that starts markup anywhere in GitHub Markdown (CommonMark allows a backslash
# before any ASCII punctuation): escapes, code, emphasis, links/images ([ ]; "(" and "!" only act
# next to them), raw HTML, table cells, strikethrough, maths ($), entities (&) and mentions (@).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$@])")
# What GitHub links after escaping: "://" (http, https, ftp...), "www.", an "@" that starts a
# mention (after a space or at the start) or sits in an e-mail address (a dotted domain after
# it). Metric paths such as js_distance@top_p=1.0 stay as they are (copyable into a policy).
# (Runs after escaping, so every "@" is already "\@".)
_AUTOLINK = re.compile(r"(?i):/|www\.|(?:^|(?<=\s))\\@|@(?=[\w-]+\.[\w-])")
_ZWSP = "\u200b"


def _break_autolink(m: re.Match[str]) -> str:
    found = m.group(0)  # ":/" -> ":<zwsp>/", "www." -> "www<zwsp>.", "@" -> "@<zwsp>"
    return found + _ZWSP if found.endswith("@") else found[:-1] + _ZWSP + found[-1]
# ...and what acts only at the start of a line: headings, list items, setext underlines.
_MD_LINE_START = re.compile(r"^(?:[#+=-](?!\d)|\d{1,9}(?=[.)](?:\s|$)))")


def md_escape(text: str) -> str:
    r"""Plain text -> Markdown that renders as exactly that text, on one line.

    >>> print(md_escape("<b>x</b> | a_b"))
    \<b\>x\</b\> \| a\_b
    """
    text = " ".join(visible(text).split())  # a newline would end a table row or a paragraph
    text = _MD_SPECIAL.sub(r"\\\1", text)
    # GitHub turns bare URLs, www. names and e-mail addresses into links after escaping: a
    # zero-width space keeps them plain text (it is invisible where the text is read)
    text = _AUTOLINK.sub(_break_autolink, text)

    def line_start(m: re.Match[str]) -> str:
        # "1. x" stays text as "1\. x", "# x" as "\# x"; a number like "-0.5" is left alone.
        return m.group(0) + "\\" if m.group(0)[0].isdigit() else "\\" + m.group(0)

    return _MD_LINE_START.sub(line_start, text, count=1)


def _fence(text: str) -> str:
    """A fenced code block longer than any backtick run in ``text`` (content is verbatim, but
    for control and bidirectional characters, written out by :func:`visible`)."""
    text = visible(text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _table(t: Table) -> str:
    rows = [[md_escape(c) for c in r] for r in t.rows]
    table = tabulate(rows, headers=[md_escape(h) for h in t.headers], tablefmt="github",
                     colalign=t.align, disable_numparse=True)
    return f"*{md_escape(t.caption)}*\n\n{table}" if t.caption else table


def _block(b: Block) -> str:
    if isinstance(b, Paragraph):
        text = md_escape(b.text)
        return f"**{text}**" if b.tone else text
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return f"![{md_escape(b.caption)}](figures/{b.name}.svg)"
    if isinstance(b, Code):
        return _fence(b.text)
    raise TypeError(f"unknown block {type(b).__name__}")


def render_blocks(blocks: list[Block]) -> str:
    """The Markdown blocks of a section (those marked ``md``), blank-line separated."""
    return "\n\n".join(_block(b) for b in blocks if b.md)


def _section(s: Section) -> str:
    return "\n\n".join([f"## {md_escape(s.title)}", md_escape(s.intro),
                        render_blocks(s.blocks)])


def render_markdown(doc: Document) -> str:
    """The Markdown report (figures referenced relatively: keep figures/ beside report.md)."""
    head = f"# {md_escape(doc.title)}\n\n{md_escape(doc.subtitle)}"
    body = "\n\n".join(_section(s) for s in doc.sections)
    foot = "*Full report with every table: report.html (self-contained, opens offline).*"
    return f"{head}\n\n{body}\n\n{foot}\n"
