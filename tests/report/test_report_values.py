"""Formatting and safe access: checked by parsing the text back, and by property round trips."""

from __future__ import annotations

import math
import random

import pytest
from report_checks import decimals_of, md_unescape, parse_stat

from fmaudit.report.figures import OKABE_ITO, ensemble_colors, group_order
from fmaudit.report.markdown import md_escape
from fmaudit.report.values import NA, find_k, find_top_p, fmt_num, fmt_stat, fmt_text, get


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_missing_numbers_print_na(value: float | None) -> None:
    assert fmt_num(value) == NA
    assert fmt_stat({"mean": value, "std": 0.1}) == NA


def test_fmt_num_parses_back_within_its_precision() -> None:
    rng = random.Random(0)
    for _ in range(500):
        x = rng.uniform(-1, 1) * 10 ** rng.uniform(-6, 6)
        text = fmt_num(x)
        back = float(text.replace(",", ""))
        # 4 significant digits, or whole numbers from 1000 up.
        tolerance = 0.5 if abs(x) >= 1000 else abs(x) * 5e-4 * 1.0001
        assert abs(back - x) <= tolerance, (x, text)


def test_fmt_num_integers_and_booleans() -> None:
    assert fmt_num(4012345) == "4,012,345"
    assert fmt_num(0.0) == "0"
    assert fmt_num(True) == "yes"
    assert fmt_num("12 GB") == "12 GB"  # a string where a number was expected stays text


def test_fmt_stat_keeps_two_digits_of_std_and_rounds_mean_alike() -> None:
    rng = random.Random(1)
    for _ in range(500):
        mean = rng.uniform(-1, 1) * 10 ** rng.uniform(-3, 4)
        std = abs(mean) * 10 ** rng.uniform(-4, 0.5) + 1e-6
        text = fmt_stat({"mean": mean, "std": std})
        m, s = parse_stat(text)
        assert s is not None and m is not None
        mean_text = text.split("±")[0].strip()
        d = decimals_of(mean_text)
        assert abs(m - mean) <= 0.5 * 10 ** -d + 1e-12, text
        assert abs(s - std) <= 0.05 * std + 1e-12, text  # two significant digits
        assert decimals_of(text.split("±")[1].strip()) == d or "e" in text, text


def test_fmt_stat_without_std_prints_mean_only() -> None:
    assert fmt_stat({"mean": 0.25, "std": None, "members": [0.25]}) == "0.25"
    assert fmt_stat({"std": 0.1}) == NA
    assert fmt_stat(None) == NA
    assert fmt_stat("oops") == NA


def test_fmt_text_lists_and_nulls() -> None:
    assert fmt_text([1, 1000, None, "a"]) == "1, 1000, n/a, a"  # no thousands comma in lists
    assert fmt_text("two\nlines") == "two lines"


def test_get_tolerates_every_kind_of_missing() -> None:
    obj = {"a": {"b": [10, {"c": None}]}, "s": "text"}
    assert get(obj, "a", "b", 0) == 10
    assert get(obj, "a", "b", 1, "c") is None
    assert get(obj, "a", "b", 5) is None
    assert get(obj, "a", "x", "y") is None
    assert get(obj, "s", 0) is None  # a string is not indexed
    assert get(obj, "s", "k") is None
    assert get(None, "a") is None


def test_find_top_p_and_k_match_by_value() -> None:
    js = [{"top_p": 0.5000000000001, "mean": 1.0}, {"top_p": 1.0, "mean": 2.0}, "junk"]
    assert find_top_p(js, 0.5)["mean"] == 1.0
    assert find_top_p(js, 0.7) == {}
    assert find_k([{"k": 10, "mean": 3.0}], 10)["mean"] == 3.0
    assert find_k(None, 10) == {}


def test_md_escape_round_trips_any_text() -> None:
    rng = random.Random(2)
    alphabet = "ab1. -#+=*_`[]()<>|~&$@!\\{}:/"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        escaped = md_escape(text)
        assert md_unescape(escaped) == " ".join(text.split()), (text, escaped)
        # Nothing that acts anywhere in a line is left unescaped.
        assert not any(c in "`*_[]<>|~&$@" for c in md_unescape_free(escaped)), escaped


def md_unescape_free(escaped: str) -> str:
    """The characters of ``escaped`` that are not preceded by an escaping backslash."""
    out, i = [], 0
    while i < len(escaped):
        if escaped[i] == "\\" and i + 1 < len(escaped):
            i += 2
            continue
        out.append(escaped[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("text", ["# h", "- item", "+ item", "1. first", "12) x", "= x"])
def test_md_escape_line_start_markers(text: str) -> None:
    escaped = md_escape(text)
    assert escaped != text and "\\" in escaped
    assert md_unescape(escaped) == text


@pytest.mark.parametrize("text", ["-0.17", "0.5 ± 0.1", "dna-kmer", "3,497"])
def test_md_escape_leaves_numbers_and_names_readable(text: str) -> None:
    assert md_escape(text) == text


def test_ensemble_colours_are_okabe_ito_distinct_and_stable() -> None:
    names = [f"e{i}" for i in range(10)]
    colors = ensemble_colors(names)
    assert list(colors.values())[:8] == list(OKABE_ITO)
    assert len(set(list(colors.values())[:8])) == 8
    assert colors["e8"] == colors["e0"]  # cycles beyond eight
    assert ensemble_colors(names[:3]) == {n: colors[n] for n in names[:3]}


def test_group_order_is_model_order() -> None:
    groups = ["head", "layer.10", "other", "layer.2", "embeddings", "layer.2"]
    assert group_order(groups) == ["embeddings", "layer.2", "layer.10", "head", "other"]


def test_reference_checkers_catch_what_they_should() -> None:
    """The checkers used on rendered pages, tested on pages that do load things."""
    from report_checks import external_refs, raw_refs

    bad = ['<img src="http://x.example/a.png">', "<link rel=stylesheet href=https://x/a.css>",
           '<div style="background: url(http://x/a.png)">', "<style>@import 'x.css';</style>",
           '<svg><use xlink:href="https://x/s.svg#a"/></svg>', "<iframe src=file.html>"]
    for page in bad:
        assert external_refs(page), page
        assert raw_refs(page) or "@import" in page, page
    good = '<a href="#s">x</a><img src="data:image/png;base64,AA"><p>src=text only</p>'
    assert external_refs(good) == []
    assert raw_refs(good) == ["text"]  # the strict regex also flags text that looks like one


def test_formatting_examples_and_boundaries() -> None:
    """Exact texts at the documented examples and at every threshold (a property test with a
    tolerance lets an extra digit or a boundary slip)."""
    from fmaudit.report.values import fmt_seconds

    assert fmt_stat({"mean": 0.45083, "std": 0.00157}) == "0.4508 ± 0.0016"
    assert fmt_stat({"mean": 3497.2, "std": 57.3}) == "3,497 ± 57"
    assert fmt_stat({"mean": 0.25, "std": 0.0}) == "0.25 ± 0"
    assert fmt_stat({"mean": 0.123456, "std": 3.1e-5}) == "0.123456 ± 0.000031"  # 6 decimals
    assert fmt_stat({"mean": 0.1234567, "std": 3.1e-6}) == "0.1235 ± 3.1e-06"  # beyond 6
    assert fmt_num(1000.0) == "1,000" and fmt_num(999.94) == "999.9"
    assert fmt_num(0.001) == "0.001" and fmt_num(0.00099) == "9.900e-04"
    assert fmt_num(1.25e-4) == "1.250e-04" and fmt_num(-2.5e-5) == "-2.500e-05"
    assert fmt_seconds(59.94) == "59.9 s" and fmt_seconds(60) == "1 min 00 s"
    assert fmt_seconds(125.4) == "2 min 05 s"


def test_find_top_p_does_not_take_a_neighbouring_level() -> None:
    entries = [{"top_p": 0.05, "mean": 1.0}, {"top_p": 0.1, "mean": 2.0}]
    assert find_top_p(entries, 0.1)["mean"] == 2.0
    assert find_top_p(entries, 0.05)["mean"] == 1.0
    assert find_top_p(entries, 0.06) == {}
