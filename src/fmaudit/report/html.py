"""Document -> one self-contained HTML page: inline CSS, inline SVG, no scripts, nothing fetched.

Every piece of text goes through :func:`html.escape`; the only markup not written here is the
SVG of our own figures (matplotlib escapes the text inside). A Content-Security-Policy forbids
scripts and remote loads as a second line of defence.
"""

from __future__ import annotations

import html
import re

from fmaudit.report.document import Block, Code, Document, Figure, Paragraph, Section, Table
from fmaudit.report.values import NA, visible

# Nothing may be fetched or executed; inline styles are needed by the CSS and the SVG figures.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
       "form-action 'none'")

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --alt: #f6f8fa; --accent: #0072B2;
        --pass: #1a7f37; --fail: #cf222e; color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg); font-size: 15px; line-height: 1.55;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
                    "Noto Sans", "Liberation Sans", sans-serif; }
header, main, footer { max-width: 1360px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 36px; padding-bottom: 14px; border-bottom: 2px solid var(--fg); }
h1 { font-size: 1.8rem; margin: 0 0 4px; letter-spacing: -0.01em; }
.subtitle { color: var(--muted); margin: 0; overflow-wrap: anywhere; }
nav ol { list-style: none; display: flex; flex-wrap: wrap; gap: 2px 18px; padding: 0;
         margin: 14px 0 0; font-size: 0.92rem; }
nav a, a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { padding: 6px 0 18px; border-bottom: 1px solid var(--line); }
h2 { font-size: 1.35rem; margin: 26px 0 6px; }
p { margin: 8px 0; max-width: 80ch; overflow-wrap: anywhere; }
p.how { color: var(--muted); }
p.pass, p.fail { font-weight: 600; padding: 8px 12px; border-radius: 6px; max-width: none; }
p.pass { color: var(--pass); background: #dafbe1; }
p.fail { color: var(--fail); background: #ffebe9; }
.table { overflow-x: auto; margin: 14px 0 20px; }
table { border-collapse: collapse; font-size: 0.84rem; }
caption { text-align: left; font-weight: 600; padding: 0 0 6px; white-space: nowrap; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top;
         text-align: left; }
th { background: var(--alt); font-weight: 600; border-bottom: 1px solid #afb8c1;
     vertical-align: bottom; min-width: 6ch; }
td { max-width: 34ch; overflow-wrap: anywhere; }
td:first-child { min-width: 10ch; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.na { color: #8c959f; }
td.fail { color: var(--fail); font-weight: 600; }
tbody tr:nth-child(even) { background: #fbfcfd; }
figure { margin: 16px 0 26px; }
figure svg { display: block; width: 100%; max-width: 820px; height: auto; }
figcaption { color: var(--muted); font-size: 0.88rem; margin-top: 2px; max-width: 80ch; }
pre { background: var(--alt); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      font-size: 0.84rem; white-space: pre-wrap; overflow-wrap: anywhere; }
code, pre { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas,
                         "Liberation Mono", monospace; }
footer { color: var(--muted); font-size: 0.85rem; padding-top: 16px; padding-bottom: 36px; }
@media print { nav { display: none; } section { break-inside: avoid-page; } }
""".strip()


_NUM = ' class="num"'


def _e(text: str) -> str:
    return html.escape(visible(text), quote=True)


def inline_svg(svg: str) -> str:
    """The SVG element alone: the XML declaration and DOCTYPE are not valid inside HTML."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("figure is not an SVG document")
    return svg[start:].strip()


def _table(t: Table) -> str:
    head = "".join(f'<th scope="col"{_NUM if a == "right" else ""}>{_e(h)}</th>'
                   for h, a in zip(t.headers, t.align, strict=True))
    body = []
    for row in t.rows:
        cells = []
        for cell, a in zip(row, t.align, strict=True):
            classes = ["num"] if a == "right" else []
            if cell == NA:
                classes.append("na")
            elif cell == "FAIL":
                classes.append("fail")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_e(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return (f'<div class="table"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return f'<p class="{b.tone}">{_e(b.text)}</p>' if b.tone else f"<p>{_e(b.text)}</p>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return (f'<figure id="fig-{_e(b.name)}">{inline_svg(b.svg)}'
                f"<figcaption>{_e(b.caption)}</figcaption></figure>")
    if isinstance(b, Code):
        return f"<pre><code>{_e(b.text)}</code></pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _section(s: Section) -> str:
    blocks = "\n".join(_block(b) for b in s.blocks if b.html)
    return (f'<section id="{_e(s.id)}">\n<h2>{_e(s.title)}</h2>\n'
            f'<p class="how">{_e(s.intro)}</p>\n{blocks}\n</section>')


def render_html(doc: Document) -> str:
    """The whole page as a string (UTF-8, one file, opens offline)."""
    toc = "".join(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>' for s in doc.sections)
    sections = "\n".join(_section(s) for s in doc.sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<title>{_e(doc.title)}: {_e(doc.subtitle)}</title>
<style>
{CSS}
</style>
</head>
<body>
<header>
<h1>{_e(doc.title)}</h1>
<p class="subtitle">{_e(doc.subtitle)}</p>
<nav><ol>{toc}</ol></nav>
</header>
<main>
{sections}
</main>
<footer>Rendered by fmaudit from report.json alone. This page is self-contained: it runs no
scripts and loads nothing from the network.</footer>
</body>
</html>
"""
    # Belt and braces: our templates and matplotlib never emit a script element.
    if re.search(r"<\s*script", page, re.IGNORECASE):
        raise RuntimeError("rendered HTML contains a <script> element (a renderer bug)")
    return page
