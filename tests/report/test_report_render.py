"""Rendering report.json fixtures: files, sections, offline HTML, parseable Markdown, nulls."""

from __future__ import annotations

import contextlib
import copy
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from report_checks import (
    decimals_of,
    external_refs,
    load_fixture,
    markdown_tables,
    md_unescape,
    parse_stat,
    raw_refs,
)

from fmaudit.errors import FmauditError
from fmaudit.report import render_report
from fmaudit.report.figures import OKABE_ITO
from fmaudit.report.html import render_html
from fmaudit.report.markdown import render_markdown
from fmaudit.report.sections import build_document

ALL_FIGURES = ["entropy", "rank_profile", "disagreement", "embedding_overlap", "fisher_coarse",
               "fisher_layers", "contextual_cka"]
ALL_SECTIONS = ["summary", "entropy", "disagreement", "embeddings", "fisher", "contextual",
                "provenance"]


@pytest.fixture(scope="module")
def rendered_three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """report_three rendered once for the read-only checks of this module."""
    out = tmp_path_factory.mktemp("three")
    report = load_fixture("report_three.json")
    paths = render_report(report, out)
    return {"report": report, "out": out, "paths": paths,
            "html": (out / "report.html").read_text(), "md": (out / "report.md").read_text()}


def section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def test_files_written_and_returned(rendered_three: dict[str, Any]) -> None:
    out, paths = rendered_three["out"], rendered_three["paths"]
    expected = {"report.html", "report.md", *(f"figures/{f}.svg" for f in ALL_FIGURES)}
    assert set(paths) == expected
    for name, path in paths.items():
        assert path == out / name and path.is_file() and path.stat().st_size > 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"{f}.svg" for f in ALL_FIGURES)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_sections_in_order(rendered_three: dict[str, Any]) -> None:
    assert section_ids(rendered_three["html"]) == ALL_SECTIONS
    headings = re.findall(r"^## (.+)$", rendered_three["md"], re.MULTILINE)
    assert headings == ["Summary", "Predictive entropy", "Disagreement between seeds",
                        "Embedding instability", "Fisher information", "Contextual embeddings",
                        "Provenance"]
    # Each section opens with its how-to-read paragraph of (at least) two sentences.
    for intro in re.findall(r'<p class="how">([^<]+)</p>', rendered_three["html"]):
        assert len(re.findall(r"[.!?](\s|$)", intro)) >= 2, intro


def test_html_is_self_contained(rendered_three: dict[str, Any]) -> None:
    html = rendered_three["html"]
    assert not re.search(r"<\s*script", html, re.IGNORECASE)
    assert external_refs(html) == []
    assert raw_refs(html) == []  # not even text that looks like a reference
    assert not re.search(r"<link\b|<img\b|<iframe\b|<object\b|<embed\b|@font-face", html, re.I)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # Figures are inline SVG, one per figure, without XML prologs inside the HTML.
    assert html.count("<svg") == len(ALL_FIGURES)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


def test_inline_svg_ids_unique_and_references_resolve(rendered_three: dict[str, Any]) -> None:
    html = rendered_three["html"]
    ids = re.findall(r'\bid="([^"]+)"', html)
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert dupes == []
    refs = re.findall(r'href="#([^"]+)"', html) + re.findall(r"url\(#([^)]+)\)", html)
    assert refs and set(refs) <= set(ids)


def test_markdown_tables_parse_and_fit_a_pr_comment(rendered_three: dict[str, Any]) -> None:
    md = rendered_three["md"]
    tables = markdown_tables(md)
    assert len(tables) >= 6
    assert len(md.splitlines()) < 150
    for f in ALL_FIGURES:
        assert f"](figures/{f}.svg)" in md
        assert (rendered_three["out"] / "figures" / f"{f}.svg").is_file()


SUMMARY_PATHS = {  # header -> how to find the value in report.json, written independently
    "normalised entropy": lambda e: e["entropy"]["normalized"],
    "context gain (bits)": lambda e: e["context_gain_bits"],
    "JS distance p=1.0": lambda e: next(x for x in e["disagreement"]["js_distance"]
                                        if x["top_p"] == 1.0),
    "JS distance p=0.5": lambda e: next(x for x in e["disagreement"]["js_distance"]
                                        if x["top_p"] == 0.5),
    "top-10 overlap": lambda e: next(x for x in e["static_embeddings"]["topk_overlap"]
                                     if x["k"] == 10),
    "chance": lambda e: {"mean": next(x for x in e["static_embeddings"]["topk_overlap"]
                                      if x["k"] == 10)["chance"]},
    "init": lambda e: {"mean": next(x for x in e["static_embeddings"]["topk_overlap"]
                                    if x["k"] == 10)["init"]},
    "Fisher embeddings": lambda e: e["fisher"]["coarse"]["embeddings"],
    "Fisher body": lambda e: e["fisher"]["coarse"]["body"],
    "Fisher head": lambda e: e["fisher"]["coarse"]["head"],
}


def test_summary_table_matches_the_json(rendered_three: dict[str, Any]) -> None:
    """Every summary cell parses back to its report.json value within its printed precision."""
    summary = markdown_tables(rendered_three["md"])[0]
    headers = [md_unescape(h) for h in summary["headers"]]
    assert headers[:2] == ["ensemble", "members"]
    ensembles = rendered_three["report"]["ensembles"]
    assert [md_unescape(r[0]) for r in summary["rows"]] == list(ensembles)
    for row in summary["rows"]:
        ens = ensembles[md_unescape(row[0])]
        assert int(row[1]) == len(ens["members"])
        for header, cell in zip(headers[2:], row[2:], strict=True):
            stat = SUMMARY_PATHS[header](ens)
            mean, std = parse_stat(cell)
            if stat.get("mean") is None:
                assert cell == "n/a", (header, cell)
                continue
            d = decimals_of(cell.split("±")[0].strip())
            # 4 significant digits at most, or rounded to the std's decimals.
            tolerance = max(0.5 * 10 ** -d, abs(stat["mean"]) * 5e-4) * 1.0001
            assert abs(mean - stat["mean"]) <= tolerance, (header, cell, stat)
            if stat.get("std") is None:
                assert std is None, (header, cell)
            else:
                assert abs(std - stat["std"]) <= 0.05 * stat["std"], (header, cell, stat)


def test_gate_verdict_shown(rendered_three: dict[str, Any]) -> None:
    assert '<p class="fail">Gate: FAILED' in rendered_three["html"]
    assert "**Gate: FAILED" in rendered_three["md"]
    failed = markdown_tables(rendered_three["md"])[1]
    assert [md_unescape(r[1]) for r in failed["rows"]] == ["dna-kmer"]  # only failed checks


def test_gate_checks_table_verdicts_follow_each_check(rendered_three: dict[str, Any]) -> None:
    """pass / FAIL (marked class="fail") / n/a for a skipped check, one row per check in order;
    a gate whose verdict is null gets no pass/fail tone."""
    html = rendered_three["html"]
    table = html[html.index("<caption>Gate checks</caption>"):]
    table = table[: table.index("</table>")]
    first_cells = re.findall(r"<tr><td([^>]*)>([^<]*)</td><td[^>]*>([^<]*)</td>", table)
    checks = rendered_three["report"]["gate"]["checks"]
    expected = [{True: "pass", False: "FAIL", None: "n/a"}[c["passed"]] for c in checks]
    assert [cell for _, cell, _ in first_cells] == expected
    assert [ens for _, _, ens in first_cells] == [c["ensemble"] for c in checks]
    assert [attr for attr, cell, _ in first_cells if cell == "FAIL"] == [' class="fail"']
    undecided = copy.deepcopy(rendered_three["report"])
    undecided["gate"]["passed"] = None
    html = render_html(build_document(undecided))
    assert "Gate: n/a" in html and '<p class="fail">Gate' not in html
    assert '<p class="pass">Gate' not in html


def test_single_member_nulls_render_as_na(rendered_three: dict[str, Any]) -> None:
    summary = markdown_tables(rendered_three["md"])[0]
    row = next(r for r in summary["rows"] if r[0] == "dna-bpe")
    headers = summary["headers"]
    for col in ("JS distance p=1.0", "JS distance p=0.5", "top-10 overlap", "init"):
        assert row[headers.index(col)] == "n/a"
    # chance is analytic and known even with one member; Fisher has a mean but no spread.
    assert row[headers.index("chance")] != "n/a"
    assert "±" not in row[headers.index("Fisher body")]
    assert "dna-bpe (n/a)" in (rendered_three["out"] / "figures" / "disagreement.svg").read_text()


def test_every_ensemble_has_one_colour_in_every_figure(rendered_three: dict[str, Any]) -> None:
    names = list(rendered_three["report"]["ensembles"])
    colours = {n: OKABE_ITO[i].lower() for i, n in enumerate(names)}
    for f in ALL_FIGURES:
        svg = (rendered_three["out"] / "figures" / f"{f}.svg").read_text().lower()
        for name, colour in colours.items():
            assert colour in svg, (f, name)
        # No colour from matplotlib's default cycle (tab:blue) sneaks in.
        assert "#1f77b4" not in svg, f


def test_tied_fisher_side_by_side(report_three: dict[str, Any], tmp_path: Path) -> None:
    both = (tmp_path / "a")
    render_report(report_three, both)
    svg = (both / "figures" / "fisher_coarse.svg").read_text()
    assert "untied attribution" in svg and "tied matrix counted once" in svg
    for ens in report_three["ensembles"].values():
        ens["fisher"]["tied"] = False
        ens["fisher"].pop("share_tied", None)
        ens["fisher"].pop("coarse_tied", None)
    one = tmp_path / "b"
    render_report(report_three, one)
    for name in ("fisher_coarse", "fisher_layers"):
        svg = (one / "figures" / f"{name}.svg").read_text()
        assert "untied attribution" in svg and "tied matrix counted once" not in svg


def test_absent_analyses_are_omitted(report_minimal: dict[str, Any], tmp_path: Path) -> None:
    paths = render_report(report_minimal, tmp_path)
    assert set(paths) == {"report.html", "report.md", "figures/entropy.svg",
                          "figures/disagreement.svg"}
    html = (tmp_path / "report.html").read_text()
    assert section_ids(html) == ["summary", "entropy", "disagreement", "provenance"]
    md = (tmp_path / "report.md").read_text()
    markdown_tables(md)
    assert "Gate:" not in md and "Fisher information" not in md
    summary = markdown_tables(md)[0]
    assert summary["headers"] == ["ensemble", "members", "normalised entropy",
                                  "context gain (bits)", "JS distance p=1.0", "JS distance p=0.5"]


def test_rerender_is_byte_identical_and_drops_stale_figures(report_three: dict[str, Any],
                                                            tmp_path: Path) -> None:
    first = render_report(report_three, tmp_path / "one")
    (tmp_path / "two" / "figures").mkdir(parents=True)
    (tmp_path / "two" / "figures" / "stale.svg").write_text("<svg/>")
    second = render_report(copy.deepcopy(report_three), tmp_path / "two")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    assert not (tmp_path / "two" / "figures" / "stale.svg").exists()


def test_unwritable_out_dir_is_bad_input(report_minimal: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FmauditError, match=str(blocker)):
        render_report(report_minimal, blocker)


def test_render_rejects_unknown_schema(report_minimal: dict[str, Any], tmp_path: Path) -> None:
    report_minimal["schema_version"] = 2
    with pytest.raises(FmauditError, match="unknown schema_version 2"):
        render_report(report_minimal, tmp_path)
    assert not (tmp_path / "report.html").exists()


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaves(v, (*path, k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))]
    return [path]


def _set(obj: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete and isinstance(obj, dict):
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize("mode", ["null-all-numbers", "null-some", "delete-some", "wrong-types"])
def test_never_crashes_on_nulls_or_odd_shapes(report_three: dict[str, Any], mode: str) -> None:
    rng = random.Random(mode)
    report = copy.deepcopy(report_three)
    for path in _leaves(report_three["ensembles"]):
        path = ("ensembles", *path)
        value = report_three
        for key in path:
            value = value[key]
        null_all = mode == "null-all-numbers" and isinstance(value, (int, float))
        if null_all or (mode == "null-some" and rng.random() < 0.3):
            _set(report, path, None)
        elif mode == "delete-some" and rng.random() < 0.2 and isinstance(path[-1], str):
            with contextlib.suppress(KeyError, TypeError):  # an ancestor was deleted already
                _set(report, path, None, delete=True)
        elif mode == "wrong-types" and rng.random() < 0.2:
            _set(report, path, rng.choice(["oops", [], {}, True, -1]))
    for key in ("timing", "tool", "settings", "gate", "created", "command"):
        if rng.random() < 0.5:
            report[key] = None
    doc = build_document(report)
    html, md = render_html(doc), render_markdown(doc)
    assert section_ids(html)[0] == "summary" and section_ids(html)[-1] == "provenance"
    assert "n/a" in html
    markdown_tables(md)
    cells = [c for t in markdown_tables(md) for r in t["rows"] for c in r]
    cells += re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert not [c for c in cells if c.strip().lower() in {"nan", "inf", "-inf", "none", "null"}]


def test_summary_markdown_is_the_reports_first_table(rendered_three: dict[str, Any]) -> None:
    from fmaudit.report import summary_markdown

    summary = summary_markdown(rendered_three["report"])
    tables = markdown_tables(summary)
    assert tables == markdown_tables(rendered_three["md"])[:2]  # summary + failed gate checks
    assert "**Gate: FAILED" in summary and "](figures/" not in summary


def test_values_too_large_to_draw_leave_that_figure_out(tmp_path: Path) -> None:
    """Finite values near the float maximum pass validation but overflow matplotlib's layout:
    the render still succeeds, that figure is replaced by a note, the others are drawn."""
    report = load_fixture("report_three.json")
    for ens in report["ensembles"].values():
        gain = ens["context_gain_bits"]
        gain["mean"], gain["members"] = 1.7e308, [1.7e308] * len(gain["members"])
    render_report(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Figure entropy is left out: its values cannot be drawn" in page
    drawn = {p.stem for p in (tmp_path / "figures").glob("*.svg")}
    assert "entropy" not in drawn and {"rank_profile", "disagreement"} <= drawn
    assert "Figure entropy is left out" in (tmp_path / "report.md").read_text()


def _html_table(html: str, caption: str) -> list[list[str]]:
    """The cells of the table with ``caption``, row by row (header row first), unescaped."""
    import html as html_lib

    start = html.index(f"<caption>{caption}</caption>")
    table = html[start:html.index("</table>", start)]
    return [[html_lib.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_every_html_table_reads_its_own_json_fields(tmp_path: Path) -> None:
    """The HTML-only tables, cell by cell against the report they render (a live audit's: the
    demo's), so no column can show a neighbouring field (null for init, chance for null,
    CKA for kNN overlap, the untied share for the tied one)."""
    import json

    from fmaudit.report.values import fmt_num, fmt_stat

    report = json.loads((Path(__file__).parents[2] / "reports/demo/report.json").read_text())
    render_report(report, tmp_path)
    html = (tmp_path / "report.html").read_text()
    ens = report["ensembles"]
    labels = {"Procrustes disparity": "procrustes_disparity",
              "Procrustes cosine": "procrustes_cosine", "linear CKA": "linear_cka",
              "RBF CKA": "rbf_cka"}
    whole = _html_table(html, "Whole-matrix comparisons between seeds")
    assert whole[0] == ["ensemble", "metric", "between seeds", "null", "init"]
    assert len(whole) == 1 + len(ens) * len(labels)
    for name, label, pairs, null, init in whole[1:]:
        stat = ens[name]["static_embeddings"][labels[label]]
        assert (pairs, null, init) == (fmt_stat(stat), fmt_num(stat["null"]),
                                       fmt_num(stat["init"]))
    topk = _html_table(html, "Top-k neighbour overlap")
    assert topk[0] == ["ensemble", "k", "overlap", "chance", "null", "init"]
    for name, k, overlap, chance, null, init in topk[1:]:
        stat = next(r for r in ens[name]["static_embeddings"]["topk_overlap"]
                    if r["k"] == int(k.replace(",", "")))
        assert (overlap, chance, null, init) == (fmt_stat(stat), fmt_num(stat["chance"]),
                                                 fmt_num(stat["null"]), fmt_num(stat["init"]))
    for caption, key in (("Linear CKA between seeds per layer", "linear_cka"),
                         ("kNN overlap between seeds per layer", "knn_overlap")):
        table = _html_table(html, caption)
        assert table[0] == ["layer", *ens]
        for layer, *cells in table[1:]:
            assert cells == [fmt_stat(e["contextual_embeddings"]["layers"][int(layer)][key])
                             for e in ens.values()]
    fisher = _html_table(html, "Share of Fisher information per coarse group")
    assert fisher[0] == ["ensemble", "attribution", "embeddings", "body", "head"]
    for name, attribution, *cells in fisher[1:]:
        coarse = ens[name]["fisher"]["coarse" if attribution == "untied" else "coarse_tied"]
        assert cells == [fmt_stat(coarse[g]) for g in ("embeddings", "body", "head")]
    assert {row[1] for row in fisher[1:]} == {"untied", "tied once"}
    members = _html_table(html, "Members")
    col = {h: i for i, h in enumerate(members[0])}
    listed = [m for e in ens.values() for m in e["members"]]
    assert len(members) == 1 + len(listed)
    for row, member in zip(members[1:], listed, strict=True):
        assert row[col["parameters"]] == fmt_num(member["parameters"])
        assert row[col["seed"]] == fmt_num(member["seed"])
