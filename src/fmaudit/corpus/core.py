"""One corpus API for FASTA and text: selection, held-out split, windows, fingerprint.

A *source* (``FastaSource`` or ``TextSource``) only lists records and reads raw characters; all
the logic below (regions, splits, window tiling and sampling, cleaning, fingerprint) is shared, so
the English control goes through the same code as the genome.

Windows tile each split interval on a grid of ``length`` starting at the interval start, so they
never cross a record boundary nor the train/holdout boundary. Cleaning (DNA): IUPAC ambiguity
codes (R Y S W K M B D H V, and the gap characters ``-`` ``.``) become N, U becomes T (case kept),
then everything is uppercased unless ``keep_case``; windows whose N share exceeds ``max_n`` or
whose lowercase share exceeds ``max_lowercase`` are skipped. Any other character is an error.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from fmaudit.corpus.options import (
    CorpusOptions,
    Interval,
    merge_intervals,
    parse_holdout,
    parse_region,
)
from fmaudit.errors import FmauditError

SPLITS = ("train", "holdout", "all")
_IUPAC = "RYSWKMBDHV-."
_DNA_MAP = str.maketrans({**{c: "N" for c in _IUPAC}, **{c.lower(): "n" for c in _IUPAC},
                          "U": "T", "u": "t"})
_NOT_DNA = re.compile(r"[^ACGTNacgtn]")
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


@dataclass(frozen=True)
class Window:
    """A window of a corpus: ``text`` is ``record[start:start + len(text)]`` after cleaning.

    ``start`` is 0-based on the forward strand; ``reverse`` says the text was
    reverse-complemented (``reverse_complement`` option).
    """

    record: str
    start: int
    text: str
    reverse: bool = False


class WindowList(Sequence[Window]):
    """Sampled windows kept as places (record, start, strand): ~24 bytes per window instead of
    its text. Indexing reads the text back from the corpus (and cleans it the same way), so an
    audit over 100k windows of hg38 does not hold 100k window texts; :attr:`texts` is the same
    sequence as strings."""

    def __init__(self, corpus: Corpus, length: int, records: list[str], places: np.ndarray
                 ) -> None:
        self._corpus = corpus
        self.length = length
        self._records = records
        self._places = places  # int64 [n, 3]: record index, start, reverse

    def __len__(self) -> int:
        return int(self._places.shape[0])

    @overload
    def __getitem__(self, i: int) -> Window: ...
    @overload
    def __getitem__(self, i: slice) -> WindowList: ...
    def __getitem__(self, i: int | slice) -> Window | WindowList:
        if isinstance(i, slice):
            return WindowList(self._corpus, self.length, self._records, self._places[i])
        record, start, reverse = self._places[i].tolist()
        return self._corpus._window_at(self._records[record], start, self.length, bool(reverse))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WindowList | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                          strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-style equality, as a list

    @property
    def texts(self) -> WindowTexts:
        return WindowTexts(self)


class WindowTexts(Sequence[str]):
    """The texts of a :class:`WindowList`, read when indexed."""

    def __init__(self, windows: WindowList) -> None:
        self._windows = windows

    def __len__(self) -> int:
        return len(self._windows)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [w.text for w in self._windows[i]]
        return self._windows[i].text


class Source(Protocol):
    kind: str
    path: Path

    def records(self) -> list[tuple[str, int]]: ...

    def read(self, record: str, start: int, end: int) -> str: ...

    def close(self) -> None: ...


def reverse_complement(seq: str) -> str:
    """Reverse complement of an ACGTN string (case kept)."""
    return seq.translate(_COMPLEMENT)[::-1]


class Corpus:
    """A FASTA or text corpus with a deterministic train/holdout split (see module docstring)."""

    def __init__(self, path: Path, options: CorpusOptions, source: Source, *,
                 bundled: str | None = None) -> None:
        self.path = path
        self.options = options
        self.kind: str = source.kind
        self.name: str = corpus_name(path)
        self.bundled = bundled
        self._source = source
        self._fingerprint: str | None = None
        self._sha: str | None = getattr(source, "known_sha256", None)
        lengths = dict(source.records())
        self._order = list(lengths)
        selected = self._select(lengths)
        self._splits = {"all": selected, **self._split(selected, lengths)}

    # ------------------------------------------------------------------ selection and split
    def _select(self, lengths: dict[str, int]) -> list[Interval]:
        if not self.options.regions:
            return [Interval(name, 0, n) for name, n in lengths.items()]
        return merge_intervals([parse_region(r, lengths) for r in self.options.regions],
                               self._order)

    def _split(self, selected: list[Interval], lengths: dict[str, int]
               ) -> dict[str, list[Interval]]:
        holdout = parse_holdout(self.options.holdout)
        if holdout.contigs:
            chosen = {iv.record for iv in selected}
            for name in holdout.contigs:
                if name not in lengths:
                    hint = (" (a fraction must be in [0, 1), e.g. 0.1)" if name.isdigit()
                            else "")
                    raise FmauditError(f"--holdout: unknown contig {name!r} in {self.path}{hint}")
                if name not in chosen:
                    raise FmauditError(f"--holdout: contig {name!r} is not among the selected "
                                       "regions (select it with --regions, or hold out another)")
            held = set(holdout.contigs)
            return {"train": [iv for iv in selected if iv.record not in held],
                    "holdout": [iv for iv in selected if iv.record in held]}
        fraction = holdout.fraction or 0.0
        train: list[Interval] = []
        held_out: list[Interval] = []
        if self.kind == "dna":
            # the last `fraction` of every selected stretch, so each contig contributes to both
            for iv in selected:
                cut = iv.end - int(len(iv) * fraction)
                train.append(Interval(iv.record, iv.start, cut))
                held_out.append(Interval(iv.record, cut, iv.end))
        else:
            # text: the last `fraction` of the document stream (whole documents, one split)
            remaining = int(sum(len(iv) for iv in selected) * fraction)
            for iv in reversed(selected):
                take = min(remaining, len(iv))
                remaining -= take
                train.append(Interval(iv.record, iv.start, iv.end - take))
                held_out.append(Interval(iv.record, iv.end - take, iv.end))
            train.reverse()
            held_out.reverse()
        return {"train": [iv for iv in train if len(iv)],
                "holdout": [iv for iv in held_out if len(iv)]}

    def intervals(self, split: str) -> list[Interval]:
        """The stretches of a split, in file order (possibly empty: see ``_require``)."""
        if split not in SPLITS:
            raise FmauditError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        return list(self._splits[split])

    def _require(self, split: str) -> list[Interval]:
        ivs = self.intervals(split)
        if not ivs:
            if split == "train":
                raise FmauditError(f"--holdout {self.options.holdout}: leaves no training data "
                                   f"in {self.path} (hold out less, or select more regions)")
            raise FmauditError(f"--holdout {self.options.holdout}: the {split} split of "
                               f"{self.path} is empty (use a holdout fraction > 0 or contig names)")
        return ivs

    @property
    def records(self) -> list[str]:
        """Names of the selected records (contigs or documents), in file order."""
        seen = dict.fromkeys(iv.record for iv in self._splits["all"])
        return list(seen)

    def length(self, split: str = "all") -> int:
        """Characters (bases) in a split: ``"train"``, ``"holdout"`` or ``"all"``."""
        return sum(len(iv) for iv in self.intervals(split))

    # ------------------------------------------------------------------ reading
    def _clean(self, raw: str, record: str, start: int, keep_case: bool) -> str:
        if self.kind != "dna":
            return raw
        mapped = raw.translate(_DNA_MAP)
        bad = _NOT_DNA.search(mapped)
        if bad is not None:
            pos = start + bad.start() + 1
            raise FmauditError(f"{self.path}: {record}:{pos:,}: {raw[bad.start()]!r} is not a "
                               "nucleotide or IUPAC code (is this a protein or binary file?)")
        return mapped if keep_case else mapped.upper()

    def read(self, record: str, start: int, end: int, *, keep_case: bool | None = None) -> str:
        """Cleaned characters ``[start, end)`` (0-based) of a record: IUPAC -> N, uppercased
        unless ``keep_case`` (default: the corpus option); no window filters."""
        keep = self.options.keep_case if keep_case is None else keep_case
        return self._clean(self._source.read(record, start, end), record, start, keep)

    def iter_chunks(self, split: str = "all", chunk_size: int = 1 << 20, *,
                    keep_case: bool | None = None) -> Iterator[tuple[str, str]]:
        """Stream ``(record, text)`` chunks of at most ``chunk_size`` characters (bounded memory).

        Consecutive chunks of one interval are contiguous; DNA is cleaned (IUPAC -> N, uppercase
        unless ``keep_case``) but not filtered: N runs and lowercase are kept.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        keep = self.options.keep_case if keep_case is None else keep_case
        for iv in self._require(split):
            for s in range(iv.start, iv.end, chunk_size):
                e = min(s + chunk_size, iv.end)
                yield iv.record, self._clean(self._source.read(iv.record, s, e), iv.record, s, keep)

    def _filtered(self, record: str, start: int, raw: str) -> str | None:
        """A window's cleaned text (case kept), or None when the N / lowercase filters reject
        it."""
        if self.kind != "dna":
            return raw
        text = self._clean(raw, record, start, keep_case=True)
        n = len(text)
        if (text.count("N") + text.count("n")) > self.options.max_n * n:
            return None
        if self.options.max_lowercase < 1.0:
            lower = sum(text.count(c) for c in "acgtn")
            if lower > self.options.max_lowercase * n:
                return None
        return text

    def _oriented(self, text: str, reverse: bool) -> str:
        if self.kind != "dna":
            return text
        if not self.options.keep_case:
            text = text.upper()
        return reverse_complement(text) if reverse else text

    def _accept(self, record: str, start: int, raw: str, coin: np.random.Generator
                ) -> Window | None:
        """Clean one window and apply the N / lowercase filters and the strand coin."""
        text = self._filtered(record, start, raw)
        if text is None:
            return None
        reverse = self.kind == "dna" and self.options.reverse_complement and bool(
            coin.integers(2))
        return Window(record, start, self._oriented(text, reverse), reverse)

    def iter_windows(self, split: str, length: int, seed: int = 0) -> Iterator[Window]:
        """Every non-overlapping window of ``length`` characters of a split, in file order,
        skipping those the N / lowercase filters reject. ``seed`` only drives strand coins."""
        length = _check_length(length)
        coin = np.random.default_rng([seed, 1])
        block = length * max(1, (1 << 20) // length)
        for iv in self._require(split):
            end = iv.start + (len(iv) // length) * length
            for s in range(iv.start, end, block):
                raw = self._source.read(iv.record, s, min(s + block, end))
                for off in range(0, len(raw), length):
                    w = self._accept(iv.record, s + off, raw[off:off + length], coin)
                    if w is not None:
                        yield w

    def windows(self, split: str, length: int, n: int | None = None, seed: int = 0, *,
                allow_fewer: bool = False) -> Sequence[Window]:
        """Windows of ``length`` characters from a split.

        ``n=None``: every non-overlapping window (``iter_windows``), as a list. ``n=N``: N windows
        drawn without replacement from the tiling grid in a seeded random order, rejected ones
        replaced by the next in that order; the result is a pure function of (file, options,
        split, length, N, seed), and ``windows(n=N)`` is a prefix of ``windows(n=N + M)``. It
        is a :class:`WindowList`: only the windows' places are kept, texts are read back from
        the file when indexed, so memory does not grow with N times the window length.

        Raises:
            FmauditError: fewer than N acceptable windows exist (unless ``allow_fewer``).
        """
        if n is None:
            return list(self.iter_windows(split, length, seed))
        length = _check_length(length)
        if n < 0:
            raise FmauditError(f"windows: n must be >= 0, got {n}")
        ivs = self._require(split)
        counts = np.array([len(iv) // length for iv in ivs], dtype=np.int64)
        cum = np.cumsum(counts)
        total = int(cum[-1]) if len(cum) else 0
        order = np.random.default_rng(seed).permutation(total)
        coin = np.random.default_rng([seed, 1])
        records = list(dict.fromkeys(iv.record for iv in ivs))
        record_index = {name: i for i, name in enumerate(records)}
        # never more than the grid holds (an absurd --samples must not allocate for itself)
        chosen = np.empty((min(n, total), 3), dtype=np.int64)  # record index, start, reverse
        found = 0
        cum_list = cum.tolist()
        for block in range(0, total, 4096):  # a genome has millions of slots: no giant lists
            if found >= n:
                break
            for g in order[block:block + 4096].tolist():
                if found >= n:
                    break
                i = bisect.bisect_right(cum_list, g)
                iv = ivs[i]
                start = iv.start + (g - (cum_list[i - 1] if i else 0)) * length
                raw = self._source.read(iv.record, start, start + length)
                w = self._accept(iv.record, start, raw, coin)
                if w is not None:
                    chosen[found] = (record_index[iv.record], start, w.reverse)
                    found += 1
        if found < n and not allow_fewer:
            raise FmauditError(
                f"{self.path}: asked for {n} windows of {length:,} characters from the {split} "
                f"split, but only {found} exist{self.filter_note()} "
                "(ask for fewer or shorter windows, or use a larger corpus)")
        return WindowList(self, length, records, chosen[:found].copy())

    def _window_at(self, record: str, start: int, length: int, reverse: bool) -> Window:
        """An accepted window, read again (the same text :meth:`windows` accepted)."""
        text = self._filtered(record, start, self._source.read(record, start, start + length))
        if text is None:  # the file changed under us
            raise FmauditError(f"{self.path}: {record}:{start + 1:,} no longer passes the window "
                               "filters; was the file modified during the run?")
        return Window(record, start, self._oriented(text, reverse), reverse)

    def filter_note(self) -> str:
        """`` after skipping windows with N share > ...`` (DNA; empty for text): appended to
        messages about windows that are missing."""
        if self.kind != "dna":
            return ""
        return f" after skipping windows with N share > {self.options.max_n:g}" + (
            f" or lowercase share > {self.options.max_lowercase:g}"
            if self.options.max_lowercase < 1.0 else "")

    # ------------------------------------------------------------------ identity
    def file_sha256(self) -> str:
        """Hex sha256 of the file bytes, streamed in 1 MiB blocks; computed once."""
        if self._sha is None:
            from fmaudit.corpus.fasta import file_sha256

            self._sha = file_sha256(self.path)
        return self._sha

    def fingerprint(self, holdout_as_written: str | None = None) -> str:
        """``"sha256:<hex>"`` of the file hash plus the options that change the content.

        ``sha256(file_sha256 + "\\n" + json(options without fai_dir, sorted keys))``; cached.
        ``holdout_as_written``: the fingerprint with that holdout text instead of the canonical
        one (run files written before holdouts had one spelling recorded it as typed).
        """
        if holdout_as_written is not None:
            return self._fingerprint_of({**self.options.content_dict(),
                                         "holdout": holdout_as_written})
        if self._fingerprint is None:
            self._fingerprint = self._fingerprint_of(self.options.content_dict())
        return self._fingerprint

    def _fingerprint_of(self, options: dict[str, Any]) -> str:
        payload = self.file_sha256() + "\n" + json.dumps({"kind": self.kind, **options},
                                                         sort_keys=True)
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What manifests and reports record about the corpus (JSON-ready)."""
        return {
            "path": str(self.path.resolve()),
            "name": self.name,
            "kind": self.kind,
            "bundled": self.bundled,
            "fingerprint": self.fingerprint(),
            "file_sha256": self.file_sha256(),
            "options": self.options.to_dict(),
            "holdout": self.options.holdout,
            "regions": list(self.options.regions),
            "records": len(self.records),
            "length": {s: self.length(s) for s in SPLITS},
            "split_rule": self._split_rule(),
        }

    def _split_rule(self) -> str:
        if parse_holdout(self.options.holdout).contigs:
            return "held-out contigs"
        if self.kind == "dna":
            return "holdout fraction from the end of each selected contig"
        return "holdout fraction from the end of the document stream"

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, kind={self.kind!r}, holdout={self.options.holdout!r})"


def _check_length(length: int) -> int:
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise FmauditError(f"window length: must be a positive integer, got {length!r}")
    return int(length)


_COMPRESSED = (".gz", ".bgz")
DNA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".ffn", ".frn", ".seq")
TEXT_SUFFIXES = (".txt", ".text")


def _plain_name(path: Path) -> str:
    name = path.name
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return name


def corpus_name(path: Path) -> str:
    """File name without compression and format suffixes: ``hg38.fa.gz`` -> ``hg38``."""
    name = _plain_name(path)
    for suffix in DNA_SUFFIXES + TEXT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def guess_kind(path: Path) -> str | None:
    """``"dna"`` / ``"text"`` from the extension, or ``None`` when it says nothing."""
    name = _plain_name(path).lower()
    if name.endswith(DNA_SUFFIXES):
        return "dna"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None
