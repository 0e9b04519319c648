"""`fmaudit demo` end to end, shortened: stats, two trained ensembles, one side-by-side report."""

import json

import pytest

from fmaudit.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_and_writes_the_report(tmp_path, capsys):
    out, runs = tmp_path / "report", tmp_path / "runs"
    args = ["--quiet", "demo", "--out", str(out), "--runs", str(runs), "--seeds", "2",
            "--max-steps", "6", "--samples", "8", "--fisher-samples", "4"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    printed = capsys.readouterr().out
    assert exc.value.code == 0
    assert "dna" in printed and "text" in printed and "unigram token entropy" in printed
    report = json.loads((out / "report.json").read_text())
    assert list(report["ensembles"]) == ["dna", "text"]
    for name, kind in (("dna", "dna"), ("text", "text")):
        e = report["ensembles"][name]
        assert e["corpus"]["kind"] == kind and e["corpus"]["split"] == "holdout"
        assert len(e["members"]) == 2 and all(m["init"] for m in e["members"])
        assert e["static_embeddings"]["topk_overlap"][0]["init"] is not None
    assert report["gate"] is not None and len(report["gate"]["checks"]) > 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # the members were trained by fmaudit: the report names their tokenizer spec, and the
    # provenance table shows it
    specs = {n: report["ensembles"][n]["tokenizer"]["spec"] for n in ("dna", "text")}
    assert specs["dna"].startswith("kmer:") and specs["text"].startswith("bpe:"), specs
    md = (out / "report.md").read_text()
    corpora = md[md.index("Evaluation corpora"):].split("\n\n")[1]
    for name, spec in specs.items():
        row = next(line for line in corpora.splitlines() if line.startswith(f"| {name} "))
        assert [cell.strip() for cell in row.split("|")][5] == spec, row  # tokenizer column
    # a second run reuses the trained members (finished members are skipped, not retrained)
    weights = sorted(runs.glob("*/seed*/model.safetensors"))
    assert len(weights) == 4
    stamps = [p.stat().st_mtime_ns for p in weights]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    assert [p.stat().st_mtime_ns for p in weights] == stamps
