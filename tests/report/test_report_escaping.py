"""User-supplied text (ensemble names, model ids, paths, corpus names, command) stays text."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path
from typing import Any

import pytest
from report_checks import (
    MALICIOUS,
    external_refs,
    html_tags,
    load_fixture,
    make_malicious,
    markdown_tables,
    md_unescape,
    strip_fences,
)

from fmaudit.report import render_report


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("malicious")
    report = make_malicious(load_fixture("report_three.json"))
    render_report(report, out)
    return {"out": out, "report": report, "html": (out / "report.html").read_text(),
            "md": (out / "report.md").read_text(),
            "svgs": {p.stem: p.read_text() for p in (out / "figures").glob("*.svg")}}


def test_html_shows_hostile_names_as_text(rendered: dict[str, Any]) -> None:
    page = rendered["html"]
    assert not re.search(r"<\s*script", page, re.IGNORECASE)
    tags = html_tags(page)
    names = {t for t, _ in tags}
    assert names.isdisjoint({"script", "img", "iframe", "b", "object", "embed", "link"})
    assert not [(t, a) for t, attrs in tags for a in attrs if a.lower().startswith("on")]
    assert external_refs(page) == []
    escaped = htmllib.escape(MALICIOUS)
    assert escaped in page  # shown, as text
    # In a table cell, the visible text is exactly the name.
    cells = [htmllib.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", page)]
    assert MALICIOUS in cells
    assert '"><img src=x onerror=alert(2)>&amp;' in cells


def test_svg_figures_escape_legend_text(rendered: dict[str, Any]) -> None:
    svgs = rendered["svgs"]
    assert len(svgs) == 7
    for name, svg in svgs.items():
        assert not re.search(r"<\s*script|<\s*img", svg, re.IGNORECASE), name
        texts = [htmllib.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
        # Every figure has a legend or tick label naming the first ensemble, as text.
        assert any(MALICIOUS in t for t in texts), name
    # "$...$" is not parsed as maths: the dollar signs and backslash survive as typed.
    legend = [htmllib.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>",
                                                          svgs["disagreement"])]
    assert any("$\\frac{1}{$" in t for t in legend)


def test_markdown_escapes_everything_outside_code(rendered: dict[str, Any]) -> None:
    md = rendered["md"]
    prose = strip_fences(md)
    assert not re.search(r"(?<!\\)<", prose)  # no raw HTML can open
    assert not re.search(r"(?<!\\)`", prose)  # no inline code span
    # The only links are our own figure images.
    links = re.findall(r"(?<!\\)\]\((?P<target>[^)]*)\)", prose)
    assert links and all(t.startswith("figures/") for t in links)
    assert "http://evil" not in prose  # no bare URL for GitHub to turn into a link
    tables = markdown_tables(md)  # escaped pipes keep every row's column count
    summary = tables[0]
    names = [md_unescape(r[0]) for r in summary["rows"]]
    assert names == list(rendered["report"]["ensembles"])


def test_markdown_command_is_verbatim_in_a_longer_fence(rendered: dict[str, Any]) -> None:
    md = rendered["md"]
    command = rendered["report"]["command"]
    assert "```" in command
    fence = re.search(r"^(`{4,})text\n(.*)\n\1$", md, re.MULTILINE)
    assert fence is not None and fence.group(2) == command


def test_untouched_names_are_unchanged(report_three: dict[str, Any], tmp_path: Path) -> None:
    render_report(report_three, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| dna-kmer " in md and "\\-" not in md.split("## Provenance")[0]


@pytest.mark.parametrize(("text", "linkable"), [
    ("see http://evil.example/x", True), ("www.evil.example", True), ("mail a@b.example", True),
    ("@someone", True), ("hi @someone", True),
    ("disagreement.js_distance@top_p=1.0", False), ("chr8:1-2,000", False),
])
def test_md_escape_keeps_github_from_linking_user_text(text: str, linkable: bool) -> None:
    from fmaudit.report.markdown import md_escape

    out = md_escape(text)
    assert ("\u200b" in out) == linkable
    assert md_unescape(out) == text  # what a reader sees is the text itself


def test_control_and_bidi_characters_are_written_out(tmp_path: Path) -> None:
    """A name holding a control character (invalid in XML) or a right-to-left override (which
    shows the rest of the line reversed) is shown with those characters written out as
    \\uXXXX: every SVG stays well-formed and no raw one reaches the page or the Markdown."""
    import xml.etree.ElementTree as ET

    report = load_fixture("report_three.json")
    names = ["te]]>xt\x01", "dna\u202e-kmer", "dna\x00bpe\u2066"]
    report["ensembles"] = {new: {**ens, "name": new}
                           for new, ens in zip(names, report["ensembles"].values(), strict=True)}
    fisher = report["ensembles"][names[1]]["fisher"]
    fisher["groups"] = [g.replace("layer.0", "layer\x00.0") for g in fisher["groups"]]
    for key in ("share", "share_tied"):
        fisher[key] = {g.replace("layer.0", "layer\x00.0"): v for g, v in fisher[key].items()}
    if report.get("gate"):
        for check in report["gate"]["checks"]:
            check["ensemble"] = names[0]
    render_report(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    raw = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\u202a-\u202e\u2066-\u2069]")
    assert not raw.search(page) and not raw.search(md)
    assert "dna\\u202e-kmer" in page and "dna\\\\u202e-kmer" in md  # md escapes the backslash
    svgs = sorted((tmp_path / "figures").glob("*.svg"))
    assert len(svgs) == 7
    for svg in svgs:
        ET.fromstring(svg.read_bytes())  # well-formed XML
        assert not raw.search(svg.read_text()), svg.name
    fisher_svg = (tmp_path / "figures" / "fisher_layers.svg").read_text()
    assert "layer\\u0000.0" in htmllib.unescape(fisher_svg)
