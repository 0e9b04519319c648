"""``fmaudit demo``: the README's main job, on the bundled corpora.

Corpus statistics of the bundled DNA and English text, then a tiny matched ensemble trained on
each (same recipe, only the init seed differs), audited side by side into ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click

from fmaudit.errors import FmauditError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="reports/demo", show_default=True,
              type=click.Path(file_okay=False), help="Where report.html/.md/.json go.")
@click.option("--runs", "runs_dir", default="runs/demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the trained ensembles go.")
@click.option("--seeds", default=3, show_default=True, help="Members per ensemble.")
@click.option("--recipe", default="tiny", show_default=True)
# the bundled corpora's held-out splits hold 40-50 full windows of the tiny recipe
@click.option("--samples", default=40, show_default=True, help="Evaluation windows.")
@click.option("--fisher-samples", default=32, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Override the recipe's steps.")
def demo(out_dir: str, runs_dir: str, seeds: int, recipe: str, samples: int,
         fisher_samples: int, max_steps: int | None) -> int:
    """Train tiny DNA and text ensembles on the bundled corpora and audit them side by side."""
    import sys

    from fmaudit import progress
    from fmaudit.cli.corpus_cmd import print_stats_table
    from fmaudit.cli.report_cmd import run_report
    from fmaudit.corpus import CorpusOptions, bundled, open_corpus
    from fmaudit.corpus.stats import corpus_stats
    from fmaudit.io import writable_dir
    from fmaudit.results.audit import AuditConfig
    from fmaudit.training import train_ensemble
    from fmaudit.training.recipes import load_recipe

    for option, value in (("--seeds", seeds), ("--samples", samples),
                          ("--fisher-samples", fisher_samples)):
        if value < 1:
            raise FmauditError(f"{option} {value}: must be at least 1")
    writable_dir(out_dir, "--out")  # both folders are checked before minutes of training
    writable_dir(runs_dir, "--runs")
    progress.quiet_libraries()
    resolved = load_recipe(recipe).replace(source="--max-steps", max_steps=max_steps)
    click.echo("== Corpus statistics (model-free references)")
    stats = []
    for kind in ("dna", "text"):
        with open_corpus(bundled(kind), CorpusOptions()) as corpus:
            stats.append(corpus_stats(corpus))
    print_stats_table(stats)
    runs = Path(runs_dir)
    for name in ("dna", "text"):
        click.echo(f"\n== Training the {name} ensemble ({seeds} seeds, recipe {recipe})")
        train_ensemble(bundled(name), runs / name, resolved, seeds)
    click.echo("\n== Audit")
    members = f"<0..{seeds - 1}>"
    cfg = AuditConfig(
        ensembles={"dna": [str(runs / "dna" / f"seed{members}")],
                   "text": [str(runs / "text" / f"seed{members}")]},
        samples=samples, fisher_samples=fisher_samples, argv=sys.argv[1:])
    # the shipped gate policy, for show: its verdict lands in the report; the demo's own exit
    # code says whether the demo ran, not whether seconds-old tiny models pass a release gate
    from fmaudit.gate import default_policy_path, load_policy

    policy_path = default_policy_path()
    run_report(cfg, out_dir, load_policy(policy_path), str(policy_path), None, as_json=False)
    click.echo(f"\nOpen {Path(out_dir) / 'report.html'} (or read {Path(out_dir) / 'report.md'}).")
    return 0
