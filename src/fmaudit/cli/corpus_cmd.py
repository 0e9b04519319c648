"""``fmaudit corpus stats``: model-free data-entropy references for FASTA and text corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_LEGEND = (
    "H1: unigram token entropy (bits; /log2 V: normalized). CE: held-out cross-entropy in bits "
    "per token (uni: add-one unigram; ctx k: k tokens of context, interpolated n-gram). "
    "lzma: compressed bits per base (N-free) or per character."
)


@click.group("corpus")
def corpus() -> None:
    """Model-free statistics of a FASTA or text corpus."""


@corpus.command("stats", short_help="GC/N, token entropy, held-out cross-entropy, compression.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--tokenizer", "tokenizer", default=None, metavar="SPEC",
              help="kmer:K, bpe:SIZE or char [default: kmer:6 for DNA, bpe:4101 for text].")
@click.option("--regions", multiple=True, metavar="REGION",
              help="FASTA contig or region (chr8, chr8:1,000,000-2,000,000; 1-based inclusive). "
                   "Repeat for several.")
@click.option("--holdout", default="0.1", show_default=True,
              help="Held-out fraction (from each contig's end / the end of the text) or "
                   "contig names (chr8,chr9; a whole number such as 8 is a contig name).")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Writable folder for FASTA indexes (.fai/.gzi) when the FASTA's folder is not.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(paths: tuple[Path, ...], tokenizer: str | None, regions: tuple[str, ...], holdout: str,
          index_dir: Path | None, as_json: bool) -> None:
    """Per corpus: records, length, GC and N share (DNA), token count, unigram entropy,
    held-out unigram and order-1..3 context cross-entropy, and LZMA bits per symbol.

    With no PATH, the bundled DNA and English corpora.
    """
    from fmaudit.corpus import CorpusOptions, bundled, open_corpus
    from fmaudit.corpus.stats import corpus_stats
    from fmaudit.tokenizer import parse_spec

    if tokenizer is not None:
        parse_spec(tokenizer)  # a bad spec fails before any corpus is read
    targets = list(paths) or [bundled("dna"), bundled("text")]
    options = CorpusOptions(regions=regions, holdout=holdout,
                            fai_dir=str(index_dir) if index_dir else None)
    results = []
    for path in targets:
        with open_corpus(path, options) as corpus:
            results.append(corpus_stats(corpus, spec=tokenizer))
    if as_json:
        from fmaudit.cli.output import print_json

        print_json({"corpora": results})
    else:
        print_stats_table(results)


def _row(r: dict[str, Any]) -> list[Any]:
    ctx = r["context_cross_entropy_bits"]
    return [r["name"], r["kind"], r["records"], r["length"], r["gc"], r["n_fraction"],
            r["tokenizer"], r["tokens"], r["unigram_entropy_bits"],
            r["unigram_entropy_normalized"], r["unigram_cross_entropy_bits"],
            ctx.get("1"), ctx.get("2"), ctx.get("3"), r["compression_bits_per_symbol"]]


def print_stats_table(results: list[dict[str, Any]]) -> None:
    """The stats as a table on stdout, with a one-paragraph legend."""
    from fmaudit.cli.output import print_table

    headers = ["corpus", "kind", "records", "length", "GC", "N", "tokenizer", "tokens",
               "H1", "H1/log2V", "CE uni", "CE ctx1", "CE ctx2", "CE ctx3", "lzma"]
    print_table([_row(r) for r in results], headers, floatfmt=".4g")
    click.echo()
    click.echo(click.wrap_text(_LEGEND, width=100))
