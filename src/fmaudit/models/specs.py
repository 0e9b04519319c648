"""Member specs: ``org/model-seed<0..4>@rev``, local folders, and ``NAME=SPEC`` ensembles."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from fmaudit.errors import FmauditError

_RANGE = re.compile(r"<(\d+)\.\.(\d+)>")
# The most members one spec, or all specs of one command, may expand to: far beyond any real
# family, small enough that a typo fails at once instead of expanding for hours.
MAX_MEMBERS = 1000


@dataclass(frozen=True)
class MemberSpec:
    """One member as the user named it: a local folder or a Hub repo id, and a revision."""

    source: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.source if self.revision is None else f"{self.source}@{self.revision}"


def expand_ranges(spec: str, limit: int = MAX_MEMBERS) -> list[str]:
    """Expand every ``<a..b>`` (inclusive) in ``spec``; ``<00..04>`` keeps the zero padding.

    More than ``limit`` expansions is refused (a typo like ``<0..99999999>`` would never end).

    >>> expand_ranges("org/m-seed<0..2>")
    ['org/m-seed0', 'org/m-seed1', 'org/m-seed2']
    """
    return _expand(spec, spec, limit)


def _expand(spec: str, original: str, limit: int) -> list[str]:
    match = _RANGE.search(spec)
    if match is None:
        return [spec]
    lo_text, hi_text = match.group(1), match.group(2)
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:  # more digits than Python converts
        raise FmauditError(f"{_short(original)}: range bound too long") from None
    if hi < lo:
        raise FmauditError(f"{spec}: range <{lo_text}..{hi_text}> is empty (write <low..high>)")
    if hi - lo + 1 > limit:
        raise _too_many(original, limit)
    width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
    out: list[str] = []
    for i in range(lo, hi + 1):
        head = spec[: match.start()] + str(i).zfill(width) + spec[match.end():]
        out.extend(_expand(head, original, limit))
        if len(out) > limit:  # several ranges multiply
            raise _too_many(original, limit)
    return out


def _short(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _too_many(spec: str, limit: int) -> FmauditError:
    return FmauditError(f"{_short(spec)}: expands to more than {limit} members (check the "
                        "<low..high> ranges)")


def parse_member_specs(specs: list[str]) -> list[MemberSpec]:
    """Expand ranges and split ``@revision`` suffixes (a Windows-style ``C:@`` is not a concern)."""
    members: list[MemberSpec] = []
    for raw in specs:
        if not raw.strip():
            raise FmauditError("SPEC: empty member spec")
        for spec in expand_ranges(raw):
            source, revision = spec, None
            if "@" in spec:
                source, _, revision = spec.rpartition("@")
                if not source or not revision:
                    raise FmauditError(f"{spec}: malformed '@revision' (write ID@REVISION)")
            members.append(MemberSpec(source, revision))
        if len(members) > MAX_MEMBERS:
            raise FmauditError(f"SPEC: more than {MAX_MEMBERS} members in all (last: "
                               f"{_short(raw)})")
    seen = set()
    for m in members:
        if m.label in seen:
            raise FmauditError(f"{m.label}: member listed twice")
        seen.add(m.label)
    return members


def parse_ensemble_option(value: str) -> tuple[str, list[str]]:
    """``NAME=SPEC [SPEC...]`` (specs separated by spaces or commas) -> (name, specs)."""
    name, sep, rest = value.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise FmauditError(f"--ensemble {value!r}: expected NAME=SPEC "
                           "(e.g. dna='org/m-seed<0..4>')")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        # controls, and format characters such as a right-to-left override, which would
        # reorder how the name and whatever follows it display in tables and reports
        raise FmauditError(f"--ensemble {value!r}: the name has control or formatting "
                           "characters")
    specs = [s for s in re.split(r"[\s,]+", rest.strip()) if s]
    return name, specs
