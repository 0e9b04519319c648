"""``fmaudit report``: audit checkpoint families; write report.json (+ HTML and Markdown)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from fmaudit.errors import FmauditError


def _floats(value: str, option: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise FmauditError(f"{option} {value!r}: expected comma-separated numbers") from None
    if not out:
        raise FmauditError(f"{option}: no values given")
    return out


def _ints(value: str, option: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise FmauditError(f"{option} {value!r}: expected comma-separated integers") from None
    if not out or any(v < 1 for v in out):
        raise FmauditError(f"{option} {value!r}: expected positive integers")
    return out


def _corpus_map(values: tuple[str, ...], names: list[str]) -> dict:
    out: dict = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in names:
            key: str | None = name
        elif sep and not Path(v).exists():
            raise FmauditError(f"--corpus {v!r}: no ensemble named {name!r} "
                               f"(ensembles: {', '.join(names)})")
        else:
            key, path = None, v
        if key in out:
            which = "for every ensemble" if key is None else f"for {key!r}"
            raise FmauditError(f"--corpus {v!r}: a corpus {which} is already given "
                               f"({out[key]!r})")
        out[key] = path
    for path in out.values():
        if not Path(path).exists():
            raise FmauditError(f"--corpus {path}: no such file")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("specs", nargs=-1)
@click.option("--ensemble", "ensembles", multiple=True, metavar="NAME=SPEC...",
              help="A named family (repeatable), e.g. dna='org/m-seed<0..4>'.")
@click.option("--corpus", "corpora", multiple=True, metavar="[NAME=]FILE",
              help="Evaluation corpus (FASTA or text); NAME=FILE for one ensemble. Default: the "
                   "members' manifest held-out split.")
@click.option("--regions", multiple=True, metavar="REGION",
              help="Evaluate only this region (repeatable), e.g. chr8 or chr8:1-2,000,000.")
@click.option("--samples", default=256, show_default=True, help="Evaluation windows.")
@click.option("--seq-len", type=int, default=None, help="Tokens per window [min(model max, 512)].")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Fixes windows and masks.")
@click.option("--mask-prob", default=0.15, show_default=True)
@click.option("--top-p", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", show_default=True)
@click.option("--top-p-rule", type=click.Choice(["nucleus", "paper"]), default="nucleus",
              show_default=True)
@click.option("--k", "ks", default="1,3,5,10,20,50,100,1000", show_default=True,
              help="Neighbour counts for the static-embedding metrics.")
@click.option("--analyses", default="predictions,embeddings,fisher", show_default=True)
@click.option("--fisher-estimator", type=click.Choice(["per-token", "batch"]), default="per-token",
              show_default=True)
@click.option("--fisher-labels", type=click.Choice(["empirical", "sampled"]), default="empirical",
              show_default=True)
@click.option("--fisher-samples", default=64, show_default=True,
              help="Windows for the Fisher pass (bounded separately).")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on GPU), float32...")
@click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (runs pickle code).")
@click.option("--trust-remote-code", is_flag=True, help="Allow code shipped in the model repo.")
@click.option("--gate", "gate_policy", type=click.Path(dir_okay=False), default=None,
              help="Also gate the report with this policy (exit 1 when a check fails).")
@click.option("--baseline", type=click.Path(dir_okay=True), default=None,
              help="With --gate: the last released model's report.json, for max_increase checks.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json (and report.html/.md) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
@click.option("--resume-every", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="With --out: save the passes' progress this often, so re-running the same "
                   "command after an interruption resumes (0: never).")
def report(specs: tuple[str, ...], ensembles: tuple[str, ...], corpora: tuple[str, ...],
           regions: tuple[str, ...], samples: int, seq_len: int | None, batch_size: int, seed: int,
           mask_prob: float, top_p: str, top_p_rule: str, ks: str, analyses: str,
           fisher_estimator: str, fisher_labels: str, fisher_samples: int, device: str,
           dtype: str, allow_pickle: bool, trust_remote_code: bool, gate_policy: str | None,
           baseline: str | None, out_dir: str | None, as_json: bool,
           resume_every: float) -> int:
    """Audit checkpoint families (local folders or Hub ids, ranges like seed<0..4>)."""
    from fmaudit.models.specs import parse_ensemble_option
    from fmaudit.results.audit import AuditConfig

    groups: dict[str, list[str]] = {}
    if specs:
        groups["model"] = list(specs)
    for value in ensembles:
        name, member_specs = parse_ensemble_option(value)
        if name in groups:
            raise FmauditError(f"--ensemble {name}: named twice")
        groups[name] = member_specs
    if not groups:
        raise FmauditError("SPEC: give at least one member (a folder or Hub id) or --ensemble")
    for option, value in (("--samples", samples), ("--batch-size", batch_size),
                          ("--fisher-samples", fisher_samples)):
        if value < 1:
            raise FmauditError(f"{option} {value}: must be at least 1")
    if not resume_every >= 0:  # also refuses nan
        raise FmauditError(f"--resume-every {resume_every}: must be 0 (never) or more seconds")
    if seq_len is not None and seq_len < 4:
        raise FmauditError(f"--seq-len {seq_len}: must be at least 4")
    if not 0 < mask_prob <= 1:
        raise FmauditError(f"--mask-prob {mask_prob}: must be in (0, 1]")
    top_ps = _floats(top_p, "--top-p")
    if any(not 0 < p <= 1 for p in top_ps):
        raise FmauditError(f"--top-p {top_p}: every value must be in (0, 1]")
    analysis_names = tuple(a.strip() for a in analyses.split(",") if a.strip())
    if not analysis_names:
        raise FmauditError("--analyses: no analysis given (choose from predictions, embeddings, "
                           "fisher)")
    policy = None
    if gate_policy is not None:
        from fmaudit.gate import load_policy, require_baseline

        if not Path(gate_policy).is_file():
            raise FmauditError(f"--gate {gate_policy}: policy file not found (give a TOML "
                               "policy, e.g. recipes/gate-default.toml)")
        policy = load_policy(Path(gate_policy))  # fail before any compute
        require_baseline(policy, baseline is not None)
        _require_analyses(policy, analysis_names, gate_policy)
    cfg = AuditConfig(
        ensembles=groups, corpus=_corpus_map(corpora, list(groups)),
        regions=tuple(r.strip() for r in regions if r.strip()),
        samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed, mask_prob=mask_prob,
        top_p=top_ps, top_p_rule=top_p_rule, k=_ints(ks, "--k"),
        analyses=analysis_names,
        fisher_estimator=fisher_estimator, fisher_labels=fisher_labels,
        fisher_samples=fisher_samples, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, device=device, dtype=dtype, argv=sys.argv[1:],
        resume_dir=out_dir, resume_every=resume_every)
    baseline_data = None
    if baseline is not None:
        from fmaudit.gate import load_report

        if policy is None:
            from fmaudit.progress import warn

            warn(f"--baseline {baseline}: without --gate nothing is compared to it")
        baseline_data = load_report(Path(baseline))
    from fmaudit.io import output_dir

    if out_dir is not None:  # our names taken by someone's file or folder: found now too
        from fmaudit.report.render import FIGURES_DIR, HTML_NAME, MD_NAME, check_targets

        ours = (("report.json", False), (HTML_NAME, False), (MD_NAME, False), (FIGURES_DIR, True))
        check_targets(Path(out_dir), ours, what=f"--out {out_dir}")
    # a folder we cannot write is found now, not after the compute; a failed run leaves none
    with output_dir(out_dir, "--out") if out_dir is not None else contextlib.nullcontext():
        return run_report(cfg, out_dir, policy, gate_policy, baseline_data, as_json)


def _require_analyses(policy, analyses: tuple[str, ...], policy_path: str) -> None:
    """A check on a section that --analyses leaves out can only end in exit 2 after the
    whole audit: refuse it now (checks with missing = "skip" are meant to allow it)."""
    from fmaudit.results.audit import analysis_of

    for check in policy.checks:
        needed = analysis_of(check.metric)
        if needed is not None and needed not in analyses and check.missing != "skip":
            raise FmauditError(
                f"--gate {policy_path}: check {check.index} ({check.metric}) needs the {needed} "
                f"analysis, which --analyses {','.join(analyses)} leaves out (add it, or give "
                'the check missing = "skip")')


def run_report(cfg, out_dir: str | None, policy, policy_path: str | None,
               baseline: dict | None, as_json: bool) -> int:
    """Audit, gate, write, print. Returns the exit code (1 when the gate failed)."""
    from fmaudit import progress
    from fmaudit.cli.output import print_json
    from fmaudit.passes import distributed
    from fmaudit.results.audit import run_audit
    from fmaudit.results.summary import summary_rows

    progress.quiet_libraries()
    report_data = run_audit(cfg)
    # the main process holds the whole report: it gates, writes and prints (a failed gate
    # fails the launcher through it), and then removes every process's resume state (the
    # others keep theirs until the report exists: a kill before that resumes everyone)
    if not distributed.is_main():
        return 0
    code = 0
    if policy is not None:
        from fmaudit.gate import run_gate

        try:  # the gate result names the report "report.json", wherever --out is
            result = run_gate(report_data, Path(policy_path), baseline, policy=policy)
        except FmauditError as exc:
            # bad input that only the finished report shows (a metric it lacks): keep the
            # audit, which can be gated again with `fmaudit gate`
            if out_dir is None:
                raise
            write_report(report_data, Path(out_dir))
            saved = Path(out_dir) / "report.json"
            raise FmauditError(f"{exc} (the audit is saved, ungated: {saved})") from None
        report_data["gate"] = result.to_dict()
        code = 0 if result.passed else 1
    if out_dir is not None:
        write_report(report_data, Path(out_dir))
    if as_json:
        print_json(report_data)
    else:
        from fmaudit.cli.output import print_table

        headers, rows = summary_rows(report_data)
        print_table(rows, headers)
        if out_dir is not None:
            click.echo(f"\nwrote {Path(out_dir) / 'report.json'}", err=True)
        if report_data["gate"] is not None:
            verdict = "passed" if report_data["gate"]["passed"] else "FAILED"
            click.echo(f"gate {verdict}", err=True)
    return code


def write_report(report_data: dict, out: Path) -> None:
    """report.json and its rendered views, staged in a hidden folder inside ``out`` and then
    moved into place, report.json last, with interrupts deferred while they move: a failure
    leaves the previous report whole (never a new report.json beside stale views), and a
    Ctrl-C lands before or after the swap, never inside it."""
    import shutil
    import tempfile

    from fmaudit.io import atomic_write_json, interrupts_deferred, replace_path
    from fmaudit.passes.resume import clear_audit_state
    from fmaudit.report import render_report
    from fmaudit.report.render import check_targets

    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".report.*.tmp"):  # staging left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=".report.", suffix=".tmp", dir=out) as tmp:
            staging = Path(tmp)
            atomic_write_json(staging / "report.json", report_data)
            render_report(report_data, staging)
            check_targets(out, tuple((item.name, item.is_dir()) for item in staging.iterdir()),
                          what=f"--out {out}")
            with interrupts_deferred():  # a Ctrl-C here waits: never half a set
                for item in sorted(staging.iterdir()):
                    if item.name != "report.json":
                        replace_path(item, out / item.name)
                replace_path(staging / "report.json", out / "report.json")
        clear_audit_state(out)  # the audit is written: its passes need no resume state any more
    except OSError as exc:
        raise FmauditError(f"--out {out}: cannot write the report "
                           f"({exc.strerror or type(exc).__name__})") from None
