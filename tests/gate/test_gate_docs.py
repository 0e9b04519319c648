"""docs/gate.md: its policy example is a valid policy and its workflow is valid YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fmaudit.gate import load_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "gate.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_policy_example_loads(tmp_path: Path) -> None:
    (block,) = _blocks("toml")
    path = tmp_path / "example.toml"
    path.write_text(block, encoding="utf-8")
    assert load_policy(path).checks[0].metric == "entropy.normalized"


def test_workflow_is_valid_yaml_that_gates_and_reports() -> None:
    yaml = pytest.importorskip("yaml")
    (block,) = _blocks("yaml")
    workflow = yaml.safe_load(block)
    steps = workflow["jobs"]["audit"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "fmaudit report" in runs and "fmaudit gate" in runs and "--junit" in runs
    assert "GITHUB_STEP_SUMMARY" in runs and "report.md" in runs
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/cache@") for u in uses)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "audit/report.html" in upload["with"]["path"] and upload["if"] == "always()"
    assert workflow["defaults"]["run"]["shell"] == "bash"  # pipefail, so exit 1 fails the job
