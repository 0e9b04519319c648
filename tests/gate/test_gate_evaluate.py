"""Verdicts: values read from report.json, compared to bounds; every expectation recomputed here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmaudit.errors import EXIT_GATE_FAILED, EXIT_OK, FmauditError
from fmaudit.gate import (
    GateResult,
    default_policy_path,
    load_policy,
    load_report,
    metric_names,
    run_gate,
)

PolicyFile = Callable[[str], Path]
Report = dict[str, Any]


def gate(report: Report, policy_file: PolicyFile, body: str,
         baseline: Report | None = None) -> GateResult:
    return run_gate(report, policy_file(body), baseline)


def members(report: Report, ens: str, *path: str) -> np.ndarray:
    node: Any = report["ensembles"][ens]
    for key in path:
        node = node[key]
    return np.asarray(node["members"], dtype=float)


# --- pass / fail ---------------------------------------------------------------------------------

def test_pass_and_fail_follow_the_bound(two: Report, policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nmax = 0.9\n')
    by_ens = {r.ensemble: r for r in result.checks}
    assert list(by_ens) == list(two["ensembles"])  # every ensemble, in report order
    for name, row in by_ens.items():
        value = members(two, name, "entropy", "normalized").mean()  # independent mean
        assert row.value == pytest.approx(value, rel=1e-12)
        assert row.status == ("pass" if value <= 0.9 else "fail")
        assert row.passed is bool(value <= 0.9)
        assert (row.stat, row.bound, row.max, row.min) == ("mean", "<= 0.9", 0.9, None)
    assert by_ens["dna"].status == "fail" and by_ens["text"].status == "pass"
    assert not result.passed and result.exit_code == EXIT_GATE_FAILED
    assert "0.98 > max 0.9" in by_ens["dna"].message


def test_all_passing_gate_exits_zero(two: Report, policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nmax = 0.99\n'
                  'min = 0.1\n')
    assert result.passed and result.exit_code == EXIT_OK
    assert {r.status for r in result.checks} == {"pass"}
    assert result.checks[0].bound == "in [0.1, 0.99]"


def test_min_bound_fails_below(two: Report, policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '[[check]]\nmetric = "context_gain_bits"\nmin = 0.05\n')
    for row in result.checks:
        gain = members(two, row.ensemble, "context_gain_bits").mean()
        assert row.status == ("pass" if gain >= 0.05 else "fail")
    assert [r.status for r in result.checks] == ["fail", "pass"]
    assert "< min 0.05" in result.checks[0].message


def test_bounds_are_inclusive(two: Report, policy_file: PolicyFile) -> None:
    exact = two["ensembles"]["text"]["entropy"]["normalized"]["mean"]
    for key in ("max", "min"):
        result = gate(two, policy_file, f'[[check]]\nmetric = "entropy.normalized"\n'
                      f'ensemble = "text"\n{key} = {exact!r}\n')
        assert result.checks[0].status == "pass"


@pytest.mark.parametrize(("stat", "reduce"), [("mean", np.mean), ("max", np.max),
                                              ("min", np.min),
                                              ("std", lambda x: np.std(x, ddof=1))])
def test_stat_over_members(two: Report, policy_file: PolicyFile, stat: str,
                           reduce: Callable[[np.ndarray], float]) -> None:
    result = gate(two, policy_file, f'[[check]]\nmetric = "fisher.coarse.embeddings"\n'
                  f'stat = "{stat}"\nmax = 100\n')
    for row in result.checks:
        expected = reduce(members(two, row.ensemble, "fisher", "coarse", "embeddings"))
        assert row.value == pytest.approx(expected, rel=1e-9)
        assert row.stat == stat


def test_max_over_members_can_fail_where_mean_passes(two: Report,
                                                     policy_file: PolicyFile) -> None:
    shares = members(two, "dna", "fisher", "coarse", "embeddings")
    bound = (shares.mean() + shares.max()) / 2  # between the mean and the worst member
    body = f'[[check]]\nmetric = "fisher.coarse.embeddings"\nensemble = "dna"\nmax = {bound}\n'
    assert gate(two, policy_file, body).checks[0].status == "pass"
    assert gate(two, policy_file, body + 'stat = "max"\n').checks[0].status == "fail"


def test_plain_number_is_used_directly(two: Report, policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '[[check]]\nmetric = "unigram_cross_entropy_bits"\nmax = 11\n')
    for row in result.checks:
        value = two["ensembles"][row.ensemble]["unigram_cross_entropy_bits"]
        assert row.value == value and row.stat is None
        assert row.status == ("pass" if value <= 11 else "fail")


def test_share_and_selectors(two: Report, policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '''
[[check]]
metric = "disagreement.js_distance@top_p=1"
max = 0.5
[[check]]
metric = "static_embeddings.topk_overlap@k=10"
min = 0.1
[[check]]
metric = "fisher.share.layer.0"
max = 1
''')
    rows = {(r.check, r.ensemble): r for r in result.checks}
    for ens_name, ens in two["ensembles"].items():
        js = next(e for e in ens["disagreement"]["js_distance"] if e["top_p"] == 1.0)["mean"]
        ov = next(e for e in ens["static_embeddings"]["topk_overlap"] if e["k"] == 10)["mean"]
        assert rows[1, ens_name].value == js
        assert rows[1, ens_name].status == ("pass" if js <= 0.5 else "fail")
        assert rows[2, ens_name].value == ov
        assert rows[2, ens_name].status == ("pass" if ov >= 0.1 else "fail")
        share = members(two, ens_name, "fisher", "share", "layer.0").mean()
        assert rows[3, ens_name].value == pytest.approx(share)


def test_pair_statistic_has_no_max(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"check 1: .*over member pairs.*stat 'max' does not"):
        gate(two, policy_file, '[[check]]\nmetric = "disagreement.js_distance@top_p=1.0"\n'
             'stat = "max"\nmax = 1\n')


def test_plain_number_has_no_std(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"single number, so stat 'std' does not apply"):
        gate(two, policy_file, '[[check]]\nmetric = "vocab_size"\nstat = "std"\nmax = 1\n')


# --- not applicable ------------------------------------------------------------------------------

def test_null_values_are_skipped_not_failed(single: Report, policy_file: PolicyFile) -> None:
    result = gate(single, policy_file, '''
[[check]]
metric = "disagreement.js_distance@top_p=1.0"
max = 0.0
[[check]]
metric = "entropy.normalized"
stat = "std"
max = 0.0
[[check]]
metric = "entropy.normalized"
max = 0.9
''')
    js, std, ent = result.checks
    assert single["ensembles"]["text"]["disagreement"]["js_distance"][-1]["mean"] is None
    assert (js.status, js.passed, js.value) == ("skip", None, None)
    assert (std.status, std.stat) == ("skip", "std")
    assert js.message.startswith("not applicable")
    assert ent.status == "pass"
    assert result.passed and result.count("skip") == 2
    assert result.summary() == ("gate PASSED: 1 passed, 0 failed, 2 skipped (not applicable) "
                                "of 3 checks")


def test_missing_skip_opt_in(two: Report, policy_file: PolicyFile) -> None:
    del two["ensembles"]["text"]["fisher"]  # analysis not run for one ensemble
    body = '[[check]]\nmetric = "fisher.coarse.embeddings"\nmax = 1\n'
    with pytest.raises(FmauditError, match=r"not found in ensemble 'text'"):
        gate(two, policy_file, body)
    rows = gate(two, policy_file, body + 'missing = "skip"\n').checks
    assert [(r.ensemble, r.status) for r in rows] == [("dna", "pass"), ("text", "skip")]


# --- relative_to ---------------------------------------------------------------------------------

def test_relative_to_is_the_ratio(two: Report, policy_file: PolicyFile) -> None:
    dna = members(two, "dna", "entropy", "normalized")
    text = members(two, "text", "entropy", "normalized")
    ratio = dna.mean() / text.mean()
    body = '[[check]]\nmetric = "entropy.normalized"\nrelative_to = "text"\nmax = {b}\n'
    result = gate(two, policy_file, body.format(b=ratio * 1.01))
    assert [r.ensemble for r in result.checks] == ["dna"]  # the reference is not gated
    row = result.checks[0]
    assert row.value == pytest.approx(ratio, rel=1e-12)
    assert (row.status, row.relative_to, row.bound) == ("pass", "text",
                                                         f"ratio to text <= {ratio * 1.01:g}")
    assert gate(two, policy_file, body.format(b=ratio * 0.99)).checks[0].status == "fail"
    # the stat applies to both sides
    result = gate(two, policy_file, body.format(b=100) + 'stat = "max"\n')
    assert result.checks[0].value == pytest.approx(dna.max() / text.max())


def test_relative_to_zero_or_null_denominator_is_skipped(two: Report,
                                                         policy_file: PolicyFile) -> None:
    body = ('[[check]]\nmetric = "corpus.unk_fraction"\nensemble = "dna"\nrelative_to = "text"\n'
            'max = 1\n')
    assert two["ensembles"]["text"]["corpus"]["unk_fraction"] == 0.0
    row = gate(two, policy_file, body).checks[0]
    assert row.status == "skip" and "ratio is undefined" in row.message
    two["ensembles"]["text"]["corpus"]["unk_fraction"] = None
    assert gate(two, policy_file, body).checks[0].status == "skip"


def test_relative_to_missing_ensemble(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"relative_to 'rna' is not an ensemble of .*"
                                           r"\(present: dna, text\)"):
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nrelative_to = "rna"\n'
             'max = 1\n')


def test_relative_to_the_only_ensemble(single: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match="no ensemble besides relative_to 'text'"):
        gate(single, policy_file, '[[check]]\nmetric = "entropy.normalized"\n'
             'relative_to = "text"\nmax = 1\n')


# --- baseline ------------------------------------------------------------------------------------

def test_max_increase_against_baseline(two: Report, baseline_two: Report,
                                       policy_file: PolicyFile) -> None:
    now = members(two, "dna", "entropy", "normalized").mean()
    then = members(baseline_two, "dna", "entropy", "normalized").mean()
    delta = now - then
    assert delta > 0.02  # the fixture's regression
    body = '[[check]]\nmetric = "entropy.normalized"\nmax_increase = {inc}\n'
    result = gate(two, policy_file, body.format(inc=0.02), baseline_two)
    rows = {r.ensemble: r for r in result.checks}
    assert rows["dna"].status == "fail" and rows["text"].status == "pass"
    assert rows["dna"].baseline == pytest.approx(then)
    assert rows["dna"].max == pytest.approx(then + 0.02)
    assert rows["dna"].bound == "increase <= 0.02 vs baseline"
    assert f"{delta:+.4g}" in rows["dna"].message
    assert result.exit_code == EXIT_GATE_FAILED
    assert gate(two, policy_file, body.format(inc=delta * 1.001), baseline_two).passed


def test_max_decrease_against_baseline(two: Report, baseline_two: Report,
                                       policy_file: PolicyFile) -> None:
    # compare the old report to the new one: entropy went down by the same delta
    body = ('[[check]]\nmetric = "entropy.normalized"\nensemble = "dna"\n'
            'max_decrease = 0.02\nmax_increase = 1\n')
    row = gate(baseline_two, policy_file, body, two).checks[0]
    assert row.status == "fail" and "allowed -0.02" in row.message
    assert row.bound == "change in [-0.02, +1] vs baseline"


def test_baseline_bounds_forgive_rounding(two: Report, baseline_two: Report,
                                          policy_file: PolicyFile) -> None:
    base, inc = 0.7, 0.1
    now = round(base + inc, 10)
    assert not now - base <= inc and not now <= base + inc  # naive floats would refuse it
    two["ensembles"]["dna"]["unigram_cross_entropy_bits"] = now
    baseline_two["ensembles"]["dna"]["unigram_cross_entropy_bits"] = base
    row = gate(two, policy_file, f'[[check]]\nmetric = "unigram_cross_entropy_bits"\n'
               f'ensemble = "dna"\nmax_increase = {inc}\n', baseline_two).checks[0]
    assert row.status == "pass"


def test_range_and_baseline_rows_from_one_check(two: Report, baseline_two: Report,
                                                policy_file: PolicyFile) -> None:
    result = gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nensemble = "text"'
                  '\nmax = 0.9\nmax_increase = 0.02\n', baseline_two)
    assert [r.bound for r in result.checks] == ["<= 0.9", "increase <= 0.02 vs baseline"]


def test_max_increase_without_baseline_is_bad_input(two: Report,
                                                    policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"check 1 uses max_increase.*pass --baseline"):
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nmax_increase = 0.1\n')
    with pytest.raises(FmauditError, match=r"uses max_decrease"):
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nmax_decrease = 0.1\n')


def test_baseline_missing_pieces(two: Report, baseline_two: Report,
                                 policy_file: PolicyFile) -> None:
    del baseline_two["ensembles"]["text"]
    body = '[[check]]\nmetric = "entropy.normalized"\nmax_increase = 1\n'
    # implicitly gated ensemble new since the baseline: skipped
    rows = {r.ensemble: r for r in gate(two, policy_file, body, baseline_two).checks}
    assert rows["text"].status == "skip" and "not in the baseline" in rows["text"].message
    assert rows["dna"].status == "pass"
    # named explicitly: the baseline file is wrong
    with pytest.raises(FmauditError, match=r"ensemble 'text' is not in .*present: dna"):
        gate(two, policy_file, body + 'ensemble = "text"\n', baseline_two)
    # a metric the baseline lacks (analysis not run then): as for the report, exit 2 by default
    del baseline_two["ensembles"]["dna"]["fisher"]
    body = '[[check]]\nmetric = "fisher.coarse.embeddings"\nensemble = "dna"\nmax_increase = 1\n'
    with pytest.raises(FmauditError, match=r"metric 'fisher.coarse.embeddings' not found in "
                                           r"ensemble 'dna' of baseline report.json: .*the "
                                           r"baseline lacks it"):
        gate(two, policy_file, body, baseline_two)
    # ... and a skipped row that says why with missing = "skip"
    row = gate(two, policy_file, body + 'missing = "skip"\n', baseline_two).checks[0]
    assert row.status == "skip" and row.message.startswith("not applicable: baseline: ")
    assert "of baseline report.json (missing = \"skip\")" in row.message


def test_baseline_sharing_no_ensemble_is_bad_input(two: Report, single: Report,
                                                   policy_file: PolicyFile) -> None:
    body = '[[check]]\nmetric = "entropy.normalized"\nmax_increase = 1\n'
    del two["ensembles"]["text"]  # only dna left; the single-member baseline has only text
    with pytest.raises(FmauditError, match=r"shares no ensemble with .*\(baseline: text; "
                                           r"report: dna"):
        gate(two, policy_file, body, single)


# --- bad input -----------------------------------------------------------------------------------

def test_unknown_metric_lists_the_valid_names(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError) as exc:
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalised"\nmax = 1\n')
    msg = str(exc.value)
    assert "metric 'entropy.normalised' not found in ensemble 'dna'" in msg
    assert "did you mean entropy.normalized" in msg
    listed = msg.split("valid names: ", 1)[1]
    for name in metric_names(two["ensembles"]["dna"]):
        if "@" not in name:
            assert name in listed
    assert "disagreement.js_distance@top_p={0.05," in listed
    assert "\n" not in msg


def test_unknown_selector_value_lists_present_values(two: Report,
                                                     policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"no element with k=7 \(present: 1, 3, 5, 10"):
        gate(two, policy_file, '[[check]]\nmetric = "static_embeddings.topk_overlap@k=7"\n'
             'min = 0\n')


def test_table_is_not_a_metric(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"'disagreement' is a table, not a number"):
        gate(two, policy_file, '[[check]]\nmetric = "disagreement"\nmax = 1\n')


def test_missing_ensemble_lists_present_ones(two: Report, policy_file: PolicyFile) -> None:
    with pytest.raises(FmauditError, match=r"ensemble 'rna' is not in .*\(present: dna, text\)"):
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nensemble = "rna"\n'
             'max = 1\n')


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r.pop("schema_version"), "no schema_version"),
    (lambda r: r.update(schema_version=2), "unknown schema_version 2"),
    (lambda r: r.update(ensembles={}), "no ensembles"),
    (lambda r: r["ensembles"].update(dna=[1]), r"ensembles.dna: must be an object"),
])
def test_malformed_report(two: Report, policy_file: PolicyFile,
                          mutate: Callable[[Report], Any], message: str) -> None:
    mutate(two)
    with pytest.raises(FmauditError, match=message):
        gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\nmax = 1\n')


def test_load_report(tmp_path: Path, two: Report) -> None:
    (tmp_path / "report.json").write_text(json.dumps(two), encoding="utf-8")
    assert load_report(tmp_path) == two  # a folder means its report.json
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(FmauditError, match=r"bad.json: not valid JSON"):
        load_report(bad)
    bad.write_text('{"schema_version": 1, "ensembles": {"a": {"x": Infinity}}}', encoding="utf-8")
    with pytest.raises(FmauditError, match=r"contains Infinity"):
        load_report(bad)
    with pytest.raises(FmauditError, match=r"report not found"):
        load_report(tmp_path / "nope.json")


# --- the default policy and the gate object ---------------------------------------------

def test_default_policy_passes_healthy_and_fails_near_uniform(two: Report) -> None:
    policy = load_policy(default_policy_path())
    result = run_gate(two, policy.path, policy=policy)
    text = [r for r in result.checks if r.ensemble == "text"]
    dna = [r for r in result.checks if r.ensemble == "dna"]
    assert len(text) == len(dna) == len(policy.checks)
    assert all(r.status == "pass" for r in text)
    assert all(r.status == "fail" for r in dna)  # fails every one of the study's markers
    assert result.exit_code == EXIT_GATE_FAILED
    del two["ensembles"]["dna"]
    assert run_gate(two, policy.path, policy=policy).exit_code == EXIT_OK


def test_default_policy_on_a_single_member_model(single: Report) -> None:
    result = run_gate(single, default_policy_path())
    assert result.passed and result.count("skip") == 2 and result.count("pass") == 2


def test_gate_object_matches_the_schema(two: Report, baseline_two: Report,
                                        policy_file: PolicyFile) -> None:
    path = policy_file('[[check]]\nmetric = "entropy.normalized"\nmax = 0.9\nmax_increase = 0.1\n'
                       '[[check]]\nmetric = "disagreement.js_distance@top_p=1.0"\nmax = 0.5\n')
    single_like = json.loads(json.dumps(two))
    single_like["ensembles"]["text"]["disagreement"]["js_distance"][-1]["mean"] = None
    result = run_gate(single_like, path, baseline_two)
    obj = result.to_dict()
    json.dumps(obj, allow_nan=False)  # strict JSON
    assert obj["policy"] == str(path)
    assert obj["passed"] is result.passed is False
    assert obj["counts"] == {"checks": len(result.checks), "passed": result.count("pass"),
                             "failed": result.count("fail"), "skipped": result.count("skip")}
    assert obj["counts"]["skipped"] == 1
    for row in obj["checks"]:
        assert {"metric", "ensemble", "stat", "value", "bound", "passed", "message"} <= set(row)
        assert row["passed"] is {"pass": True, "fail": False, "skip": None}[row["status"]]
        assert row["value"] is None or isinstance(row["value"], float)
    # a report already carrying a gate object gates the same (the gate reads only ensembles);
    # only the nulled text row differs: skipped there, passed here
    two["gate"] = obj
    again = run_gate(two, path, baseline_two)
    assert again.count("fail") == result.count("fail")
    assert again.count("pass") == result.count("pass") + 1


# --- boundaries and messages the fixtures alone do not pin ------------------------------------

def test_a_drop_within_max_decrease_passes(two: Report, baseline_two: Report,
                                           policy_file: PolicyFile) -> None:
    then = members(two, "dna", "entropy", "normalized").mean()
    now = members(baseline_two, "dna", "entropy", "normalized").mean()
    drop = then - now
    assert drop > 0
    body = ('[[check]]\nmetric = "entropy.normalized"\nensemble = "dna"\n'
            f'max_decrease = {float(drop) * 1.5!r}\n')
    row = gate(baseline_two, policy_file, body, two).checks[0]
    assert row.status == "pass"
    assert row.min == pytest.approx(then - drop * 1.5)


def test_an_infinite_ratio_is_skipped(two: Report, policy_file: PolicyFile) -> None:
    two["ensembles"]["dna"]["unigram_cross_entropy_bits"] = 1e300
    two["ensembles"]["text"]["unigram_cross_entropy_bits"] = 1e-300
    row = gate(two, policy_file, '[[check]]\nmetric = "unigram_cross_entropy_bits"\n'
               'relative_to = "text"\nmax = 1\n').checks[0]
    assert row.status == "skip" and row.value is None


@pytest.mark.parametrize(("stat", "expected"), [("max", 0.9), ("min", 0.05)])
def test_stat_reads_every_member(two: Report, policy_file: PolicyFile, stat: str,
                                 expected: float) -> None:
    """The extreme member first, last and in the middle."""
    node = two["ensembles"]["dna"]["fisher"]["coarse"]["embeddings"]
    for order in ([0.9, 0.3, 0.05], [0.3, 0.05, 0.9], [0.05, 0.9, 0.3]):
        node["members"] = order
        row = gate(two, policy_file, '[[check]]\nmetric = "fisher.coarse.embeddings"\n'
                   f'ensemble = "dna"\nstat = "{stat}"\nmax = 100\n').checks[0]
        assert row.value == expected


def test_below_min_with_both_bounds_says_min(two: Report, policy_file: PolicyFile) -> None:
    value = members(two, "text", "entropy", "normalized").mean()
    row = gate(two, policy_file, '[[check]]\nmetric = "entropy.normalized"\n'
               f'ensemble = "text"\nmin = {float(value) + 0.01!r}\n'
               f'max = {float(value) + 0.1!r}\n').checks[0]
    assert row.status == "fail" and "< min" in row.message and "> max" not in row.message


def test_a_skipped_plain_number_has_no_stat(two: Report, policy_file: PolicyFile) -> None:
    """A row skipped for an undefined ratio of plain numbers names no statistic (a table's
    would say mean)."""
    row = gate(two, policy_file, '[[check]]\nmetric = "corpus.unk_fraction"\nensemble = "dna"\n'
               'relative_to = "text"\nmax = 1\n').checks[0]
    assert (row.status, row.stat) == ("skip", None)
