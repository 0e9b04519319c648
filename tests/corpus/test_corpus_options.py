"""Region parsing (samtools 1-based inclusive), holdout parsing and option validation."""

from __future__ import annotations

import pytest

from fmaudit.corpus import CorpusOptions, Interval, parse_holdout, parse_region
from fmaudit.corpus.options import merge_intervals
from fmaudit.errors import FmauditError

LENGTHS = {"chr8": 5_000_000, "chrM": 16_569, "HLA-A*01:01": 3_000}


@pytest.mark.parametrize(("text", "expected"), [
    ("chr8", Interval("chr8", 0, 5_000_000)),
    ("chr8:1,000,000-2,000,000", Interval("chr8", 999_999, 2_000_000)),
    ("chr8:1000000-2000000", Interval("chr8", 999_999, 2_000_000)),
    ("chr8:1-1", Interval("chr8", 0, 1)),
    ("chrM:16,000", Interval("chrM", 15_999, 16_569)),  # START alone: to the contig end
    ("chrM:16000-", Interval("chrM", 15_999, 16_569)),
    ("HLA-A*01:01", Interval("HLA-A*01:01", 0, 3_000)),  # a name with ':' matches whole
    ("HLA-A*01:01:11-20", Interval("HLA-A*01:01", 10, 20)),
])
def test_parse_region_is_one_based_inclusive(text: str, expected: Interval) -> None:
    assert parse_region(text, LENGTHS) == expected


def test_region_length_counts_both_ends() -> None:
    # 1-based inclusive [a, b] holds b - a + 1 bases
    assert len(parse_region("chr8:1,000,000-2,000,000", LENGTHS)) == 1_000_001


@pytest.mark.parametrize(("text", "needle"), [
    ("chr9", "unknown contig 'chr9'"),
    ("chr9:1-10", "unknown contig 'chr9'"),
    ("chrM:1-16,570", "outside contig 'chrM'"),
    ("chrM:20,000", "outside contig 'chrM'"),
    ("chrM:0-10", "starts before 1"),
    ("chrM:10-5", "START <= END"),
    ("chrM:abc", "cannot parse region"),
    ("chrM:", "cannot parse region"),
])
def test_parse_region_errors_name_the_flag(text: str, needle: str) -> None:
    with pytest.raises(FmauditError, match="--regions") as err:
        parse_region(text, LENGTHS)
    assert needle in str(err.value)


def test_merge_intervals_merges_overlaps_in_file_order() -> None:
    order = ["a", "b"]
    got = merge_intervals([Interval("b", 0, 5), Interval("a", 10, 20), Interval("a", 0, 10),
                           Interval("a", 15, 30), Interval("a", 40, 50)], order)
    assert got == [Interval("a", 0, 30), Interval("a", 40, 50), Interval("b", 0, 5)]
    # invariance: merging is idempotent and order-independent
    assert merge_intervals(list(reversed(got)), order) == got


def test_parse_holdout() -> None:
    assert parse_holdout("0.1").fraction == pytest.approx(0.1)
    assert parse_holdout("0").fraction == 0.0
    assert parse_holdout("chr8, chr9").contigs == ("chr8", "chr9")
    assert parse_holdout("2").contigs == ("2",)  # Ensembl names contigs 1, 2, ...
    for bad, problem in (("1.0", "leaves no training data"), ("1.5", "leaves no training data"),
                         ("-0.1", "is not a fraction"), ("nan", "is not a fraction")):
        with pytest.raises(FmauditError, match=f"--holdout: {bad} {problem}"):
            parse_holdout(bad)
    with pytest.raises(FmauditError, match="--holdout"):
        parse_holdout(" ")


def test_options_validate_and_round_trip() -> None:
    opts = CorpusOptions(regions=["chr8:1-10"], holdout="chr8", max_n=0.25)
    assert opts.regions == ("chr8:1-10",)  # lists (JSON manifests) become tuples
    assert CorpusOptions(**opts.to_dict()) == opts
    assert "fai_dir" not in opts.content_dict()
    with pytest.raises(FmauditError, match="--max-n"):
        CorpusOptions(max_n=1.5)
    with pytest.raises(FmauditError, match="--max-lowercase"):
        CorpusOptions(max_lowercase=-0.1)
    with pytest.raises(FmauditError, match="--holdout"):
        CorpusOptions(holdout="1.0")
