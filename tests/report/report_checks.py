"""Independent checkers for rendered reports (used by the tests in this folder).

They parse the outputs with their own small parsers instead of trusting the renderer's code.
"""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

# A load from outside the page: a src/href/action/poster/srcset attribute or a CSS url(...) whose
# target names anything but a data: URL or a same-document #fragment.
_ATTR = re.compile(r"""\b(?:src|href|action|poster|srcset|data|formaction|background)\s*=\s*["']?"""
                   r"""([^"'\s>]+)""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""", re.IGNORECASE)
_URL_ATTRS = {"src", "href", "xlink:href", "action", "poster", "srcset", "data", "formaction",
              "background", "ping", "manifest", "cite", "longdesc"}


def _remote(targets: list[str]) -> list[str]:
    return [t for t in targets if not t.startswith("#") and not t.lower().startswith("data:")]


def raw_refs(text: str) -> list[str]:
    """A plain regex over src=/href=/url( anywhere in the text (strict: also matches text)."""
    return _remote(_ATTR.findall(text) + _CSS_URL.findall(text))


def external_refs(page: str) -> list[str]:
    """What a browser would fetch: URL attributes of real elements, CSS url()/@import."""
    parser = _Tags()
    parser.feed(page)
    parser.close()
    targets = [v or "" for _, attrs in parser.tags for k, v in attrs.items()
               if k.lower() in _URL_ATTRS]
    css = parser.styles + [a.get("style") or "" for _, a in parser.tags]
    targets += [u for block in css for u in _CSS_URL.findall(block)]
    refs = _remote(targets)
    if any("@import" in block.lower() for block in css):
        refs.append("@import")
    return refs


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)

    handle_startendtag = handle_starttag


def html_tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element a browser would create, with its attributes (stdlib HTML parser)."""
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def split_row(line: str) -> list[str]:
    """Cells of a GitHub table row: split on pipes not escaped by a backslash."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def markdown_tables(md: str) -> list[dict[str, object]]:
    """Every GitHub table in ``md`` as {"headers", "rows"}; AssertionError if one is ragged.

    A table is a header row, a separator row of dashes and the pipe rows that follow. Fenced code
    blocks are skipped.
    """
    lines = strip_fences(md).splitlines()
    tables = []
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and _SEPARATOR.match(lines[i + 1].strip()):
            headers = split_row(lines[i])
            sep = split_row(lines[i + 1])
            assert len(sep) == len(headers), f"separator width differs: {lines[i + 1]!r}"
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = split_row(lines[i])
                assert len(cells) == len(headers), (
                    f"row has {len(cells)} cells, header {len(headers)}: {lines[i]!r}")
                rows.append(cells)
                i += 1
            tables.append({"headers": headers, "rows": rows})
        else:
            i += 1
    return tables


def strip_fences(md: str) -> str:
    """``md`` without its fenced code blocks (their content is shown verbatim, as text)."""
    out, fence = [], None
    for line in md.splitlines():
        m = re.match(r"^(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.startswith(fence) and line.strip() == fence[0] * len(line.strip()):
                fence = None
            continue
        out.append(line)
    return "\n".join(out)


def md_unescape(cell: str) -> str:
    """Undo backslash escapes of ASCII punctuation (what a CommonMark renderer shows) and drop
    the zero-width spaces that keep URLs and addresses from becoming links (invisible)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", cell).replace("\u200b", "")


def parse_stat(text: str) -> tuple[float | None, float | None]:
    """``"0.4508 ± 0.0016"`` -> (0.4508, 0.0016); ``"n/a"`` -> (None, None)."""
    if text == "n/a":
        return None, None
    parts = [p.strip().replace(",", "") for p in text.split("±")]
    mean = float(parts[0])
    std = float(parts[1]) if len(parts) > 1 else None
    return mean, std


def decimals_of(text: str) -> int:
    """Digits after the decimal point in a printed number (0 for integers)."""
    text = text.replace(",", "")
    if "e" in text.lower():
        mantissa, exp = text.lower().split("e")
        return max(0, decimals_of(mantissa) - int(exp))
    return len(text.split(".")[1]) if "." in text else 0


FIXTURES = Path(__file__).parent / "fixtures"
MALICIOUS = "<script>alert(1)</script>"


def load_fixture(name: str) -> dict[str, Any]:
    """A fresh copy of tests/report/fixtures/<name>."""
    return json.loads((FIXTURES / name).read_text())


def make_malicious(report: dict[str, Any]) -> dict[str, Any]:
    """Every user-supplied string replaced by something that is markup in HTML or Markdown."""
    report = copy.deepcopy(report)
    ensembles = report["ensembles"]
    renamed = {}
    hostile = [MALICIOUS, '$\\frac{1}{$ |`x`| [a](http://evil.example/) _b_ *c* # 1.',
               '"><img src=x onerror=alert(2)>&amp;']
    for (_, ens), name in zip(ensembles.items(), hostile, strict=True):
        ens["name"] = name
        ens["corpus"]["name"] = f"<b>{name}</b>"
        ens["corpus"]["path"] = "/tmp/<iframe src='http://evil.example/'>|x|"
        for m in ens["members"]:
            m["id"] = f"{name}/<svg onload=alert(3)>"
            m["revision"] = "`rm -rf /`"
        renamed[name] = ens
    report["ensembles"] = renamed
    report["command"] = f"fmaudit report --ensemble '{MALICIOUS}=runs/x' ``` <img src=x>"
    if report.get("gate"):
        for check in report["gate"]["checks"]:
            check["ensemble"] = MALICIOUS
            check["message"] = "<script>alert(4)</script> | [x](javascript:alert(5))"
    return report
