"""Corpus options, regions and held-out splits: plain data, errors that name the flag.

Coordinates inside fmaudit are 0-based half-open ``[start, end)``; regions typed by people are
1-based inclusive like samtools (``chr8:1,000,000-2,000,000`` is ``[999_999, 2_000_000)``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fmaudit.errors import FmauditError

KINDS = ("dna", "text")


@dataclass(frozen=True)
class CorpusOptions:
    """What part of a file is the corpus, how it is split and how windows are cleaned.

    Attributes:
        regions: FASTA only. Contigs or samtools-style regions (``chr8``, ``chr8:1,000-2,000``,
            ``chr8:1,000`` = to the end); empty: every record. Overlapping regions are merged.
        holdout: ``"0.1"``-style fraction or contig names ``"chr8,chr9"``. A fraction is taken
            from the end of each selected contig (DNA) or from the end of the document stream
            (text: the last documents, the boundary document split at a character); ``"0"``
            means no held-out split. Contig names are an error for text.
        max_lowercase: DNA: skip windows whose soft-masked (lowercase) share exceeds this.
        max_n: DNA: skip windows whose N share (after IUPAC codes became N) exceeds this;
            0.0 (default) allows none.
        reverse_complement: DNA: each window is reverse-complemented with probability 1/2,
            the coin drawn from the seeded RNG of the ``windows`` call, so it is reproducible.
        keep_case: DNA: keep soft-masked lowercase (default: uppercase everything). Text keeps
            its case always.
        fai_dir: folder for the ``.fai`` (and ``.gzi``) index and decompressed copies of plain
            gzip FASTA; default: beside the FASTA file (CLI: ``--index-dir``).
        kind: ``"dna"`` or ``"text"``; ``None`` guesses from the extension, then the content.
    """

    regions: tuple[str, ...] = ()
    holdout: str = "0.1"
    max_lowercase: float = 1.0
    max_n: float = 0.0
    reverse_complement: bool = False
    keep_case: bool = False
    fai_dir: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        # accept lists (from JSON manifests) and a bare string for regions
        regions = (self.regions,) if isinstance(self.regions, str) else tuple(self.regions)
        regions = tuple(str(r).strip() for r in regions if str(r).strip())
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "holdout", str(self.holdout).strip())
        if self.fai_dir is not None:
            object.__setattr__(self, "fai_dir", str(self.fai_dir))
        for name in ("max_lowercase", "max_n"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise FmauditError(f"{flag}: must be a fraction between 0 and 1, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.kind is not None and self.kind not in KINDS:
            raise FmauditError(f"kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        # fail early on a malformed value; one spelling per holdout, so the fingerprint of a
        # run does not depend on it
        object.__setattr__(self, "holdout", canonical_holdout(self.holdout))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (tuples become lists); ``CorpusOptions(**d)`` rebuilds it."""
        d = asdict(self)
        d["regions"] = list(self.regions)
        return d

    def content_dict(self) -> dict[str, Any]:
        """The options that change which characters the corpus yields (for the fingerprint)."""
        d = self.to_dict()
        d.pop("fai_dir")
        return d


@dataclass(frozen=True)
class Interval:
    """A stretch ``[start, end)`` (0-based, half-open) of one record (contig or document)."""

    record: str
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Holdout:
    """A parsed ``holdout`` option: a fraction or a set of contig names."""

    fraction: float | None = None
    contigs: tuple[str, ...] = field(default_factory=tuple)


def parse_holdout(value: str) -> Holdout:
    """``"0.1"`` -> fraction 0.1; ``"chr8,chr9"`` or ``"2"`` (a whole number is a contig name,
    as in Ensembl: it could not be a fraction) -> contigs; errors name ``--holdout``."""
    text = str(value).strip()
    if not text:
        raise FmauditError("--holdout: empty value (give a fraction like 0.1, or contig names)")
    if text.isdigit() and int(text) >= 1:
        # "1", "2", ...: Ensembl/GRCh37 contig names, and never a fraction in [0, 1)
        return Holdout(contigs=(text,))
    try:
        fraction = float(text)
    except ValueError:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names:
            raise FmauditError(f"--holdout: {value!r} names no contig") from None
        return Holdout(contigs=names)
    if not 0.0 <= fraction < 1.0:  # NaN fails both comparisons
        problem = "leaves no training data" if fraction >= 1.0 else "is not a fraction"
        raise FmauditError(f"--holdout: {text} {problem} (use a fraction in [0, 1), e.g. 0.1)")
    return Holdout(fraction=fraction)


def canonical_holdout(value: str) -> str:
    """The one spelling of a holdout: ``"0.10"``, ``".1"``, ``"1e-1"`` -> ``"0.1"``; ``"0.0"``
    -> ``"0"``; ``"chr8, chr9"`` -> ``"chr8,chr9"`` (errors as :func:`parse_holdout`)."""
    held = parse_holdout(value)
    if held.fraction is not None:
        text = repr(held.fraction)
        return text[:-2] if text.endswith(".0") else text
    return ",".join(held.contigs)


_COORD = re.compile(r"^(?P<start>[0-9][0-9,_]*)?(?:-(?P<end>[0-9][0-9,_]*)?)?$")


def _coord(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def parse_region(text: str, lengths: dict[str, int], what: str = "--regions") -> Interval:
    """Parse ``name``, ``name:start-end``, ``name:start`` or ``name:start-`` (1-based inclusive).

    A whole-string match to a record name wins, so names containing ``:`` work as in samtools.

    Raises:
        FmauditError: unknown contig, malformed coordinates, or a region outside the contig.
    """
    text = text.strip()
    if text in lengths:
        return Interval(text, 0, lengths[text])
    name, sep, coords = text.rpartition(":")
    if not sep:
        raise FmauditError(f"{what}: unknown contig {text!r} ({_known(lengths)})")
    if name not in lengths:
        raise FmauditError(f"{what}: unknown contig {name!r} in region {text!r} "
                           f"({_known(lengths)})")
    m = _COORD.match(coords.strip())
    if not coords.strip() or m is None or m.group("start") is None:
        raise FmauditError(f"{what}: cannot parse region {text!r} "
                           "(use NAME, NAME:START-END or NAME:START, 1-based inclusive)")
    length = lengths[name]
    start = _coord(m.group("start"))
    end = _coord(m.group("end")) if m.group("end") else length
    if end > length or start > length:
        raise FmauditError(f"{what}: region {text!r} is outside contig {name!r} "
                           f"(length {length:,})")
    if start < 1 or end < start:
        raise FmauditError(f"{what}: region {text!r} is empty or starts before 1 "
                           "(coordinates are 1-based inclusive, START <= END)")
    return Interval(name, start - 1, end)


def _known(lengths: dict[str, int]) -> str:
    names = list(lengths)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"known: {shown}"


def merge_intervals(intervals: list[Interval], order: list[str]) -> list[Interval]:
    """Sort by record (file order) and start, merging overlapping or touching intervals."""
    rank = {name: i for i, name in enumerate(order)}
    out: list[Interval] = []
    for iv in sorted(intervals, key=lambda iv: (rank[iv.record], iv.start, iv.end)):
        if out and out[-1].record == iv.record and iv.start <= out[-1].end:
            last = out.pop()
            out.append(Interval(iv.record, last.start, max(last.end, iv.end)))
        else:
            out.append(iv)
    return out
