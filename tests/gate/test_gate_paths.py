"""Metric paths: resolution against an ensemble, selectors, and the derived list of valid names."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from fmaudit.gate.paths import (
    PathError,
    compact_names,
    is_number,
    is_stat,
    metric_names,
    resolve,
    valid_syntax,
)


def test_resolve_plain_keys_reach_the_same_object(two: dict[str, Any]) -> None:
    dna = two["ensembles"]["dna"]
    assert resolve(dna, "entropy.normalized") is dna["entropy"]["normalized"]
    assert resolve(dna, "unigram_cross_entropy_bits") == dna["unigram_cross_entropy_bits"]
    assert resolve(dna, "fisher.coarse.embeddings") is dna["fisher"]["coarse"]["embeddings"]


def test_keys_containing_dots_resolve(two: dict[str, Any]) -> None:
    share = two["ensembles"]["dna"]["fisher"]["share"]
    assert "layer.0" in share
    assert resolve(two["ensembles"]["dna"], "fisher.share.layer.0") is share["layer.0"]


def test_longest_key_wins() -> None:
    node = {"a": {"b": 1.0}, "a.b": 2.0}
    assert resolve(node, "a.b") == 2.0
    assert resolve({"a": {"b": 1.0}}, "a.b") == 1.0


@pytest.mark.parametrize("spelling", ["1.0", "1", "1e0", "1.00000000000001", "+1.0"])
def test_selector_compares_numbers_with_tolerance(two: dict[str, Any], spelling: str) -> None:
    js = two["ensembles"]["dna"]["disagreement"]["js_distance"]
    want = next(el for el in js if el["top_p"] == 1.0)
    got = resolve(two["ensembles"]["dna"], f"disagreement.js_distance@top_p={spelling}")
    assert got is want


def test_selector_is_not_too_tolerant(two: dict[str, Any]) -> None:
    with pytest.raises(PathError, match=r"no element with top_p=0\.99 \(present: 0\.05"):
        resolve(two["ensembles"]["dna"], "disagreement.js_distance@top_p=0.99")


def test_selector_then_more_keys(two: dict[str, Any]) -> None:
    dna = two["ensembles"]["dna"]
    el = next(e for e in dna["static_embeddings"]["topk_overlap"] if e["k"] == 10)
    assert resolve(dna, "static_embeddings.topk_overlap@k=10.chance") == el["chance"]
    layer = dna["contextual_embeddings"]["layers"][1]
    assert resolve(dna, "contextual_embeddings.layers@layer=1.linear_cka") is layer["linear_cka"]


def test_string_selector_and_chained_selectors() -> None:
    node = {"rows": [{"name": "a", "k": 1, "v": 1.0}, {"name": "b", "k": 1, "v": 2.0},
                     {"name": "b", "k": 2, "v": 3.0}]}
    assert resolve(node, "rows@name=b.v") == 2.0  # first match
    assert resolve(node, "rows@name=b@k=2.v") == 3.0
    # the second selector filters the first one's hits, not the whole list
    node["rows"].insert(0, {"name": "a", "k": 2, "v": 0.0})
    assert resolve(node, "rows@name=b@k=2.v") == 3.0
    assert resolve(node, "rows@k=2@name=b.v") == 3.0


@pytest.mark.parametrize(("path", "message"), [
    ("entropy.normalised", r"no key 'normalised' under 'entropy'"),
    ("nope", r"no key 'nope' at the top"),
    ("entropy@k=1", r"'entropy' is not a list"),
    ("disagreement.js_distance@k=1", r"have no field 'k'"),
    ("unigram_cross_entropy_bits.x", r"is not a table"),
])
def test_resolve_errors_say_where(two: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PathError, match=message):
        resolve(two["ensembles"]["dna"], path)


@pytest.mark.parametrize(("path", "ok"), [
    ("entropy.normalized", True),
    ("disagreement.js_distance@top_p=1.0", True),
    ("static_embeddings.topk_overlap@k=10.null", True),
    ("fisher.share.layer.0", True),
    ("rows@name=runs/dna-1", True),
    ("", False),
    ("entropy..normalized", False),
    (".entropy", False),
    ("entropy.", False),
    ("entropy normalized", False),
    ("js@top_p", False),
    ("js@=1", False),
])
def test_valid_syntax(path: str, ok: bool) -> None:
    assert valid_syntax(path) is ok


def test_every_listed_name_resolves_to_a_number_or_statistic(two: dict[str, Any]) -> None:
    for ens in two["ensembles"].values():
        names = metric_names(ens)
        assert len(names) == len(set(names))
        for name in names:
            node = resolve(ens, name)
            assert is_number(node) or is_stat(node), name


def _stats_by_search(node: Any) -> int:
    """Independent count of statistic objects: a plain recursive search for {mean: number}."""
    if isinstance(node, dict):
        here = int(isinstance(node.get("mean"), (int, float)) and "std" in node)
        return here + sum(_stats_by_search(v) for v in node.values())
    if isinstance(node, list):
        return sum(_stats_by_search(v) for v in node)
    return 0


def test_names_cover_every_statistic(two: dict[str, Any]) -> None:
    for ens in two["ensembles"].values():
        listed = sum(is_stat(resolve(ens, n)) for n in metric_names(ens))
        assert listed == _stats_by_search(ens)


def test_names_follow_the_data_not_a_hard_coded_list(two: dict[str, Any]) -> None:
    dna = two["ensembles"]["dna"]
    dna["brand_new"] = {"score": {"mean": 0.5, "std": 0.1, "members": [0.4, 0.5, 0.6]}}
    del dna["fisher"]
    names = metric_names(dna)
    assert "brand_new.score" in names
    assert not any(n.startswith("fisher") for n in names)


def test_selector_values_are_the_ones_present(two: dict[str, Any]) -> None:
    dna = two["ensembles"]["dna"]
    names = metric_names(dna)
    for el in dna["disagreement"]["js_distance"]:
        assert f"disagreement.js_distance@top_p={el['top_p']!r}" in names
    ks = [el["k"] for el in dna["static_embeddings"]["topk_overlap"]]
    listed = sorted(int(m.group(1)) for n in names
                    if (m := re.fullmatch(r"static_embeddings\.topk_overlap@k=(\d+)", n)))
    assert listed == sorted(ks)
    # the selector field itself is not offered as a metric
    assert not any(n.endswith("@top_p=1.0.top_p") for n in names)


def test_lists_without_a_distinct_numeric_field_are_not_offered() -> None:
    # k repeats and mean is a statistic field (distinct by accident, names nothing)
    node = {"same": [{"k": 1, "mean": 0.1, "std": 0.0}, {"k": 1, "mean": 0.2, "std": 0.0}],
            "strs": [{"id": "a", "mean": 0.1, "std": 0.0}, {"id": "b", "mean": 0.2, "std": 0.0}]}
    assert metric_names(node) == []
    node["same"][1]["k"] = 2
    assert metric_names(node) == ["same@k=1", "same@k=2"]


def test_compact_names_expand_back_to_the_full_list(two: dict[str, Any]) -> None:
    dna = two["ensembles"]["dna"]
    expanded: list[str] = []
    for name in compact_names(dna):
        # expand every {a,b,c} group independently of the module's own grouping code
        parts = re.split(r"(\{[^}]*\})", name)
        choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
        expanded += ["".join(c) for c in itertools.product(*choices)]
    assert sorted(expanded) == sorted(metric_names(dna))
    assert len(compact_names(dna)) < len(metric_names(dna))


def test_names_include_a_statistics_extra_fields(two: dict[str, Any]) -> None:
    """chance, null and init beside mean/std are gate metrics too."""
    names = set(metric_names(two["ensembles"]["dna"]))
    for extra in ("chance", "null", "init"):
        assert f"static_embeddings.topk_overlap@k=10.{extra}" in names
