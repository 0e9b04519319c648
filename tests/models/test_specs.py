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


def test_range_and_revision_limits_are_enforced() -> None:
    """Each refusal on its own input, and the last '@' starts the revision."""
    from fmaudit.errors import FmauditError
    from fmaudit.models.specs import expand_ranges, parse_member_specs

    for spec, needle in (("a<0..40>b<0..40>", "more than 1000"), ("m<1..0>", "is empty")):
        with pytest.raises(FmauditError, match=needle):
            expand_ranges(spec)
    assert len(expand_ranges("a<0..999>")) == 1000  # the limit itself is allowed
    with pytest.raises(FmauditError, match="malformed '@revision'"):
        parse_member_specs(["@v1"])
    with pytest.raises(FmauditError, match="more than 1000 members in all"):
        parse_member_specs(["a<0..999>", "b"])
    [spec] = parse_member_specs(["p@x@v1"])
    assert (spec.source, spec.revision) == ("p@x", "v1")
