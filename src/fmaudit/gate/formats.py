"""Rendering a :class:`GateResult`: text table, Markdown, JSON, and JUnit XML for CI readers.

Rendering reads only the result object; nothing here decides a verdict.
"""

from __future__ import annotations

import enum
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from fmaudit.gate.evaluate import CheckResult, GateResult
from fmaudit.report.markdown import md_escape
from fmaudit.report.outputs import write_output

HEADERS = ("metric", "ensemble", "stat", "value", "bound", "verdict")
JUNIT_SUITE = "fmaudit gate"

_VERDICT = {"pass": "pass", "fail": "FAIL", "skip": "skipped (not applicable)"}
# Characters XML 1.0 cannot carry even escaped (control characters from a stray path or name).
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class OutputFormat(enum.StrEnum):
    """``fmaudit gate --format``."""

    TEXT = "text"
    MD = "md"
    JSON = "json"


def verdict(row: CheckResult) -> str:
    """``pass``, ``FAIL`` or ``skipped (not applicable)``."""
    return _VERDICT[row.status]


def _num(x: float | None) -> str:
    return "null" if x is None else f"{x:.4g}"


def _cells(row: CheckResult) -> list[str]:
    value = _num(row.value)
    if row.baseline is not None:
        value += f" (baseline {_num(row.baseline)})"
    return [row.metric, row.ensemble, row.stat or "-", value, row.bound, verdict(row)]


def to_text(result: GateResult) -> str:
    """A plain table, the one-line verdict, and a line per failed or skipped check."""
    from tabulate import tabulate

    table = tabulate([_cells(r) for r in result.checks], headers=HEADERS, tablefmt="simple",
                     disable_numparse=True)
    lines = [table, "", result.summary()]
    for r in result.checks:
        if r.status != "pass":
            label = "FAIL" if r.status == "fail" else "skipped"
            lines.append(f"  {label}: {r.ensemble} {r.metric}: {r.message}")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    # ensemble names, metric paths and messages come from the user's report and policy: the
    # report's own escaping (HTML, links, pipes, line breaks) applies here too
    return md_escape(text)


def to_markdown(result: GateResult) -> str:
    """A GitHub-flavoured table (with the detail of each row) and a one-line verdict."""
    headers = [*HEADERS, "detail"]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h == "value" else "---" for h in headers) + "|"]
    for r in result.checks:
        cells = [_md_cell(c) for c in (*_cells(r), r.message)]
        if r.status == "fail":
            cells[5] = "**FAIL**"
        lines.append("| " + " | ".join(cells) + " |")
    verdict_line = (":white_check_mark: **gate passed**" if result.passed
                    else ":x: **gate failed**")
    return "\n".join([*lines, "", f"{verdict_line}: {result.counts_text()} "
                      f"(policy {md_escape(result.policy)})"])


def to_json(result: GateResult) -> str:
    """``result.to_dict()`` as strict JSON (numbers or null)."""
    return json.dumps(result.to_dict(), indent=2, allow_nan=False)


def render(result: GateResult, fmt: OutputFormat | str) -> str:
    """The result in ``fmt`` (an :class:`OutputFormat` or its value)."""
    fmt = OutputFormat(fmt)
    if fmt is OutputFormat.TEXT:
        return to_text(result)
    if fmt is OutputFormat.MD:
        return to_markdown(result)
    if fmt is OutputFormat.JSON:
        return to_json(result)
    raise AssertionError(f"unhandled format {fmt}")  # pragma: no cover - enum is exhaustive


def _x(text: str) -> str:
    return _XML_BAD.sub("?", text)


def junit_name(row: CheckResult) -> str:
    """``<metric> <stat> <bound>``: stable across runs, so CI keeps each check's history."""
    return " ".join(p for p in (row.metric, row.stat, row.bound) if p)


def junit_xml(result: GateResult) -> bytes:
    """JUnit XML: one ``<testsuite name="fmaudit gate">``, one ``<testcase>`` per row.

    Failed rows carry ``<failure message=...>``, not-applicable rows ``<skipped message=...>``;
    the ``tests``/``failures``/``skipped``/``errors`` attributes count them (the layout read by
    Jenkins, GitLab, and the common GitHub Actions JUnit reporters).
    """
    counts = {"tests": str(len(result.checks)), "failures": str(result.count("fail")),
              "errors": "0", "skipped": str(result.count("skip")), "time": "0"}
    root = ET.Element("testsuites", {"name": "fmaudit", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": JUNIT_SUITE, **counts})
    props = ET.SubElement(suite, "properties")
    for name, value in (("policy", result.policy), ("report", result.report),
                        ("baseline", result.baseline)):
        if value is not None:
            ET.SubElement(props, "property", {"name": name, "value": _x(value)})
    for r in result.checks:
        case = ET.SubElement(suite, "testcase", {
            "classname": _x(f"fmaudit.gate.{r.ensemble}"), "name": _x(junit_name(r)),
            "time": "0"})
        if r.status == "fail":
            fail = ET.SubElement(case, "failure", {"message": _x(r.message), "type": "gate"})
            fail.text = _x(f"{r.metric} ({r.stat or 'value'}) of ensemble {r.ensemble}: "
                           f"{r.message}; bound {r.bound}; policy {result.policy} "
                           f"check {r.check}")
        elif r.status == "skip":
            ET.SubElement(case, "skipped", {"message": _x(r.message)})
        else:
            out = ET.SubElement(case, "system-out")
            out.text = _x(r.message)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(result: GateResult, path: str | Path, option: str | None = None) -> None:
    """Write :func:`junit_xml` to ``path`` atomically.

    An OS error is an :class:`FmauditError` naming ``option`` (e.g. ``--junit``) and the path.
    """
    write_output(path, junit_xml(result), option)
