import pytest

from fmaudit.errors import FmauditError
from fmaudit.models.specs import expand_ranges, parse_ensemble_option, parse_member_specs


def test_range_expands_inclusive():
    assert expand_ranges("org/m-seed<0..2>") == ["org/m-seed0", "org/m-seed1", "org/m-seed2"]


def test_zero_padding_kept():
    assert expand_ranges("m<08..10>") == ["m08", "m09", "m10"]


def test_two_ranges_expand_as_product():
    assert expand_ranges("a<0..1>b<1..2>") == ["a0b1", "a0b2", "a1b1", "a1b2"]


def test_revision_split_after_expansion():
    specs = parse_member_specs(["org/m-seed<0..1>@v1.0"])
    assert [(s.source, s.revision) for s in specs] == [("org/m-seed0", "v1.0"),
                                                       ("org/m-seed1", "v1.0")]


def test_empty_range_rejected():
    with pytest.raises(FmauditError, match="empty"):
        expand_ranges("m<3..1>")


def test_duplicate_member_rejected():
    with pytest.raises(FmauditError, match="twice"):
        parse_member_specs(["a", "a"])


def test_ensemble_option():
    assert parse_ensemble_option("dna=a b,c") == ("dna", ["a", "b", "c"])
    with pytest.raises(FmauditError, match="NAME=SPEC"):
        parse_ensemble_option("no-equals")
