"""Policy parsing: plain TOML data, every malformation rejected by name before any compute."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from fmaudit.errors import FmauditError
from fmaudit.gate import default_policy_path, load_policy
from fmaudit.gate.policy import CHECK_KEYS, STATS

REPO = Path(__file__).resolve().parents[2]

PolicyFile = Callable[[str], Path]


def test_full_check_parses(policy_file: PolicyFile) -> None:
    path = policy_file('''
[[check]]
metric = "entropy.normalized"
min = 0
max = 0.95
ensemble = ["dna", "rna"]
stat = "max"
max_increase = 0.02
max_decrease = 1
relative_to = "text"
missing = "skip"

[[check]]
metric = "disagreement.js_distance@top_p=1.0"
max = 0.5
''')
    policy = load_policy(path)
    assert policy.path == path
    first, second = policy.checks
    assert (first.index, first.metric, first.min, first.max) == (1, "entropy.normalized", 0.0, 0.95)
    assert first.ensembles == ("dna", "rna")
    assert (first.stat, first.max_increase, first.max_decrease) == ("max", 0.02, 1.0)
    assert (first.relative_to, first.missing) == ("text", "skip")
    assert isinstance(first.min, float) and isinstance(first.max_decrease, float)
    assert first.needs_baseline and policy.needs_baseline
    assert (second.index, second.ensembles, second.stat, second.missing) == (2, None, None, "error")
    assert not second.needs_baseline and second.has_range


def test_single_ensemble_string(policy_file: PolicyFile) -> None:
    path = policy_file('[[check]]\nmetric = "a"\nmax = 1\nensemble = "dna"\n')
    assert load_policy(path).checks[0].ensembles == ("dna",)


@pytest.mark.parametrize(("body", "message"), [
    # unknown keys, at each level, by name, with the allowed ones
    ('[[check]]\nmetric = "a"\nmaximum = 1\n', r"check 1: unknown key 'maximum' \(allowed: metric"),
    ('title = "x"\n[[check]]\nmetric = "a"\nmax = 1\n', r"unknown key 'title' \(allowed: check\)"),
    ('[[checks]]\nmetric = "a"\nmax = 1\n', r"unknown key 'checks'"),
    # bounds
    ('[[check]]\nmetric = "a"\nmin = 2\nmax = 1\n', r"check 1: min 2 is greater than max 1"),
    ('[[check]]\nmetric = "a"\nmax = "0.9"\n', r"max must be a number, got str '0.9'"),
    ('[[check]]\nmetric = "a"\nmin = true\n', r"min must be a number, got bool"),
    ('[[check]]\nmetric = "a"\nmax = [1]\n', r"max must be a number, got list"),
    ('[[check]]\nmetric = "a"\nmax = nan\n', r"max must be a finite number"),
    ('[[check]]\nmetric = "a"\nmax = inf\n', r"max must be a finite number"),
    ('[[check]]\nmetric = "a"\nmax_increase = -0.1\n', r"max_increase must be >= 0"),
    ('[[check]]\nmetric = "a"\nmax_decrease = "x"\n', r"max_decrease must be a number"),
    ('[[check]]\nmetric = "a"\n', r"check 1: no bound"),
    ('[[check]]\nmetric = "a"\nensemble = "dna"\n', r"no bound"),
    # metric, stat, names
    ('[[check]]\nmax = 1\n', r"check 1: missing 'metric'"),
    ('[[check]]\nmetric = 3\nmax = 1\n', r"metric 3 is not a path"),
    ('[[check]]\nmetric = "a..b"\nmax = 1\n', r"metric 'a..b' is not a path"),
    ('[[check]]\nmetric = "a"\nmax = 1\nstat = "median"\n', r"stat 'median' is not one of"),
    ('[[check]]\nmetric = "a"\nmax = 1\nensemble = 3\n', r"ensemble must be an ensemble name"),
    ('[[check]]\nmetric = "a"\nmax = 1\nensemble = []\n', r"ensemble is an empty list"),
    ('[[check]]\nmetric = "a"\nmax = 1\nrelative_to = ""\n', r"relative_to must be"),
    ('[[check]]\nmetric = "a"\nmax = 1\nensemble = "t"\nrelative_to = "t"\n',
     r"relative_to 't' is also a gated ensemble"),
    ('[[check]]\nmetric = "a"\nmax = 1\nmissing = "ignore"\n', r"missing 'ignore' is not one of"),
    # structure
    ('[check]\nmetric = "a"\nmax = 1\n', r"'check' must be an array of tables"),
    ('check = []\n', r"'check' is empty"),
    ('check = [1]\n', r"check 1: must be a table"),
    ('', r"no \[\[check\]\] tables"),
    ('[[check]]\nmetric = "a"\nmax = 1\n[[check]]\nmetric = "b"\nmax = 1\nmin = 3\n',
     r"check 2: min 3 is greater than max 1"),
    ('[[check]\nmetric = "a"\n', r"not valid TOML"),
])
def test_malformed_policies_are_rejected_by_name(policy_file: PolicyFile, body: str,
                                                 message: str) -> None:
    path = policy_file(body)
    with pytest.raises(FmauditError, match=message) as exc:
        load_policy(path)
    assert str(exc.value).startswith(str(path))  # the file at fault comes first
    assert "\n" not in str(exc.value)  # one line


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FmauditError, match=r"policy file not found \(pass --policy"):
        load_policy(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[[check]]\nmetric = "\xe9"\nmax = 1\n')
    with pytest.raises(FmauditError, match="not UTF-8"):
        load_policy(bad)


def test_every_check_key_is_accepted_somewhere(policy_file: PolicyFile) -> None:
    # the allowed list in messages must match what the parser really takes
    values = {"metric": '"a"', "min": "0", "max": "1", "ensemble": '"x"', "stat": '"mean"',
              "max_increase": "0.1", "max_decrease": "0.1", "relative_to": '"y"',
              "missing": '"skip"'}
    assert set(values) == set(CHECK_KEYS)
    body = "[[check]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    assert len(load_policy(policy_file(body)).checks) == 1


@pytest.mark.parametrize("stat", STATS)
def test_every_stat_is_accepted(policy_file: PolicyFile, stat: str) -> None:
    path = policy_file(f'[[check]]\nmetric = "a"\nmax = 1\nstat = "{stat}"\n')
    assert load_policy(path).checks[0].stat == stat


def test_default_policy_loads_and_has_the_study_checks() -> None:
    policy = load_policy(default_policy_path())
    metrics = {c.metric: c for c in policy.checks}
    assert metrics["entropy.normalized"].max is not None
    assert metrics["context_gain_bits"].min is not None
    assert metrics["disagreement.js_distance@top_p=1.0"].max is not None
    assert metrics["static_embeddings.topk_overlap@k=10"].min is not None
    # usable without a baseline, on any single model
    assert not policy.needs_baseline
    assert all(c.ensembles is None and c.relative_to is None for c in policy.checks)
    # results name it, not its install path; a user's policy keeps the path as given
    assert policy.label == "fmaudit:gate-default.toml"


def test_user_policy_label_is_the_path_as_given(policy_file: PolicyFile) -> None:
    path = policy_file('[[check]]\nmetric = "a"\nmax = 1\n')
    assert load_policy(path).label == str(path)


def test_shipped_policy_and_its_mirror_are_identical() -> None:
    packaged = REPO / "src" / "fmaudit" / "recipes" / "gate-default.toml"
    mirror = REPO / "recipes" / "gate-default.toml"
    assert packaged.read_bytes() == mirror.read_bytes()
    assert default_policy_path().resolve() == packaged.resolve()


def test_commented_examples_in_the_default_policy_are_valid(tmp_path: Path) -> None:
    # the optional checks shipped as comments must parse once uncommented
    text = default_policy_path().read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        stripped = line.removeprefix("# ")
        if stripped.startswith(("[[check]]", "metric =", "max", "min", "ensemble =", "stat =",
                                "relative_to =")):
            lines.append(stripped)
        elif not line.startswith("#"):
            lines.append(line)
    uncommented = "\n".join(lines)
    data = tomllib.loads(uncommented)
    assert len(data["check"]) > len(load_policy(default_policy_path()).checks)
    path = tmp_path / "all.toml"
    path.write_text(uncommented, encoding="utf-8")
    assert load_policy(path).needs_baseline


def test_min_equal_to_max_is_a_valid_range(policy_file: PolicyFile) -> None:
    """The docs allow min <= max: a pinned value."""
    policy = load_policy(policy_file('[[check]]\nmetric = "entropy.normalized"\nmin = 0.5\n'
                                     'max = 0.5\n'))
    assert (policy.checks[0].min, policy.checks[0].max) == (0.5, 0.5)
