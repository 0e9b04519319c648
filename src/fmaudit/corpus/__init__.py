"""Corpora: FASTA genomes and plain-text controls behind one API (docs/architecture.md).

>>> from fmaudit.corpus import open_corpus, CorpusOptions, bundled
>>> corpus = open_corpus(bundled("dna"), CorpusOptions(holdout="0.1"))
>>> corpus.kind, corpus.name
('dna', 'dna')
>>> [len(w.text) for w in corpus.windows("holdout", length=500, n=2, seed=0)]
[500, 500]
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from fmaudit.corpus.core import (
    SPLITS,
    Corpus,
    Window,
    WindowList,
    guess_kind,
    reverse_complement,
)
from fmaudit.corpus.options import CorpusOptions, Interval, parse_holdout, parse_region
from fmaudit.errors import FmauditError

__all__ = [
    "BUNDLED",
    "SPLITS",
    "Corpus",
    "CorpusOptions",
    "Interval",
    "Window",
    "WindowList",
    "bundled",
    "open_corpus",
    "parse_holdout",
    "parse_region",
    "reverse_complement",
]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# name -> file in src/fmaudit/data (provenance and licences in data/README.md)
BUNDLED = {"dna": "dna.fa", "text": "text.txt", "lambda": "lambda.fa"}


def bundled(name: str) -> Path:
    """Path of an embedded corpus: ``"dna"`` (200 kb of GRCh37 chr1/chr2/chr3 starts),
    ``"text"`` (the Debian FAQ, English prose) or ``"lambda"`` (phage lambda genome)."""
    if name not in BUNDLED:
        raise FmauditError(f"bundled corpus {name!r}: unknown (choose from {', '.join(BUNDLED)})")
    return DATA_DIR / BUNDLED[name]


def _bundled_name(path: Path) -> str | None:
    try:
        resolved = path.resolve()
    except OSError:
        return None
    for name, file in BUNDLED.items():
        if resolved == (DATA_DIR / file).resolve():
            return name
    return None


def _sniff_kind(path: Path) -> str:
    """``"dna"`` if the first non-blank character is ``>``, else ``"text"``."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError) as exc:
        raise FmauditError(f"{path}: cannot read ({exc})") from None
    return "dna" if head.lstrip().startswith(b">") else "text"


def open_corpus(path: str | os.PathLike[str], options: CorpusOptions | None = None) -> Corpus:
    """Open a FASTA (``.fa``/``.fasta``/``.fna``, plain, gzip or bgzip) or a UTF-8 text corpus.

    Raises:
        FmauditError: missing/empty/binary file, bad FASTA, non-UTF-8 text, a region outside a
            contig or an unknown contig, options that do not apply to the corpus kind.
    """
    options = options or CorpusOptions()
    path = Path(path).expanduser()
    if not path.exists():
        raise FmauditError(f"{path}: no such file (give a FASTA or text corpus; "
                           "no path uses the bundled corpora)")
    if path.is_dir():
        raise FmauditError(f"{path}: is a folder, not a corpus file")
    if path.stat().st_size == 0:
        raise FmauditError(f"{path}: the file is empty")
    kind = options.kind or guess_kind(path) or _sniff_kind(path)
    name = _bundled_name(path)
    if kind == "dna":
        from fmaudit.corpus.fasta import FastaSource

        source = FastaSource(path, options.fai_dir, bundled=name is not None)
    else:
        if options.regions:
            raise FmauditError(f"--regions: only FASTA corpora have regions ({path} is text)")
        if parse_holdout(options.holdout).contigs:
            raise FmauditError(f"--holdout {options.holdout}: contig names apply to FASTA only; "
                               f"{path} is text (use a fraction such as 0.1)")
        if options.reverse_complement:
            raise FmauditError(f"--reverse-complement: applies to DNA only ({path} is text)")
        from fmaudit.corpus.text import TextSource

        source = TextSource(path)
    return Corpus(path, options, source, bundled=name)
