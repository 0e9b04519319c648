"""The report's figures as deterministic SVG text (matplotlib Figures, SVG canvas, no pyplot).

Every figure overlays the ensembles with one colour per ensemble (Okabe-Ito, colour-blind safe),
the same colour in every figure. Text stays text (``svg.fonttype = "none"``), maths parsing is off
(an ensemble called ``$x$`` is shown as written), and the SVG carries no date and a per-figure
``svg.hashsalt`` so re-rendering the same report.json gives byte-identical files and the figures'
element ids do not collide when several SVGs are inlined in one HTML page.

Each ``*_figure`` function takes ``{ensemble name: ensemble object from report.json}`` and the
colour map, and returns the SVG text, or None when no ensemble has data for it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from fmaudit.report.values import get, mapping, num, nums, seq, spread, visible

Ensembles = Mapping[str, Mapping[str, Any]]

# Okabe & Ito (2008), ordered so the first three (the study's text / dna-kmer / dna-bpe) are the
# most distinct for every kind of colour vision; yellow late because it is faint on white.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
COARSE_GROUPS = ("embeddings", "body", "head")
_LABEL_MAX = 40

_RC = {
    "svg.fonttype": "none",  # text stays <text>, escaped by matplotlib, searchable, selectable
    "text.parse_math": False,  # "$...$" in a user-supplied name is text, not mathtext
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "figure.facecolor": "white",
}
# Metadata keys set to None are left out, so no date (nor a URL to matplotlib.org) ends up in it.
_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def ensemble_colors(names: Sequence[str]) -> dict[str, str]:
    """One Okabe-Ito colour per ensemble, in report order (cycling beyond eight ensembles)."""
    return {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}


def label(name: str) -> str:
    """An ensemble or group name shortened for a legend or tick (matplotlib escapes it in the
    SVG; characters XML does not allow, and bidirectional controls, are written out)."""
    name = " ".join(visible(name).split())
    return name if len(name) <= _LABEL_MAX else name[: _LABEL_MAX - 1] + "…"


@contextmanager
def _figure(name: str, ncols: int = 1, height: float = 3.0) -> Iterator[tuple[Figure, list[Axes]]]:
    """A constrained-layout Figure with ``ncols`` panels, under the report's rc settings."""
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"fmaudit-{name}"}):
        fig = Figure(figsize=(7.2 if ncols > 1 else 6.0, height), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
        yield fig, axes


def to_svg(fig: Figure, name: str) -> str:
    """Serialise through the SVG canvas; prefix every element id with the figure name."""
    buf = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buf, metadata=_METADATA)
    return _prefix_ids(buf.getvalue(), name)


def _prefix_ids(svg: str, name: str) -> str:
    # matplotlib names groups "figure_1", "axes_1"... in every file: inlined side by side in one
    # page they would clash (and url(#clip) could resolve to another figure's clip path).
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(value: float, _pos: int | None = None) -> str:
    """Tick text ``10⁻³`` for powers of ten (plain Unicode: maths parsing is off)."""
    if value <= 0:
        return ""
    exponent = np.log10(value)
    if abs(exponent - round(exponent)) > 1e-9:
        return ""
    return "10" + str(round(exponent)).translate(_SUPERSCRIPT)


def _log_axis(ax: Axes, which: str) -> None:
    """A log scale whose labels need no mathtext (matplotlib's default writes $10^{k}$)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(_power_of_ten))
    axis.set_minor_formatter(NullFormatter())


def _band(ax: Axes, x: Sequence[float], mean: Sequence[float | None],
          std: Sequence[float | None], color: str, floor: float | None = None) -> None:
    """Shade mean ± std where both are known (clipped at ``floor`` for log axes)."""
    lo, hi = [], []
    for m, s in zip(mean, std, strict=False):
        if m is None or s is None or s < 0:
            lo.append(np.nan)
            hi.append(np.nan)
        else:
            lo.append(m - s if floor is None else max(m - s, floor))
            hi.append(m + s)
    if np.isfinite(lo).any():
        ax.fill_between(x[: len(lo)], lo, hi, color=color, alpha=0.18, linewidth=0)


def _finite(xs: Sequence[Any], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """Pairs where both x and y are finite numbers."""
    pairs = [(num(x), y) for x, y in zip(xs, ys, strict=False)]
    keep = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in keep], [y for _, y in keep]


def _stat(obj: Any) -> tuple[float | None, float | None, list[float]]:
    """(mean, std, finite member values) of a ``{"mean", "std", "members"}`` statistic."""
    members = [v for v in nums(get(obj, "members")) if v is not None]
    return num(get(obj, "mean")), spread(get(obj, "std")), members


def _ensemble_legend(fig: Figure, names: Sequence[str], colors: Mapping[str, str],
                     extra: Sequence[Line2D] = (), missing: Sequence[str] = ()) -> None:
    """One legend below the panels: ensemble colours (+ line-style keys)."""
    handles = [Line2D([], [], color=colors[n], lw=2.5,
                      label=label(n) + (" (n/a)" if n in missing else "")) for n in names]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               frameon=False)


def _bars(ax: Axes, names: Sequence[str], colors: Mapping[str, str],
          stats: Mapping[str, tuple[float | None, float | None, list[float]]],
          title: str, ylabel: str) -> None:
    """One bar per ensemble: the mean, std over members as an error bar, members as dots."""
    for i, n in enumerate(names):
        mean, std, members = stats[n]
        if mean is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", color="#666666")
            continue
        ax.bar(i, mean, width=0.6, color=colors[n], alpha=0.85)
        if std is not None:
            ax.errorbar(i, mean, yerr=std, color="#222222", capsize=4, lw=1.2)
        if members:
            offsets = np.linspace(-0.12, 0.12, len(members)) if len(members) > 1 else [0.0]
            ax.scatter(np.asarray(offsets) + i, members, s=12, color="white",
                       edgecolors="#222222", linewidths=0.8, zorder=3)
    ax.set_xticks(range(len(names)), [label(n) for n in names],
                  rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)


def entropy_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Bars of normalised entropy H/log2|V| and context gain (bits) per ensemble, member spread."""
    names = list(ensembles)
    panels = [
        ("normalised entropy  H / log2 |V|", "share of the uniform entropy",
         {n: _stat(get(ensembles[n], "entropy", "normalized")) for n in names}),
        ("context gain (bits)", "unigram CE − model CE (bits)",
         {n: _stat(get(ensembles[n], "context_gain_bits")) for n in names}),
    ]
    panels = [p for p in panels if any(s[0] is not None for s in p[2].values())]
    if not panels:
        return None
    with _figure("entropy", ncols=len(panels)) as (fig, axes):
        for ax, (title, ylabel, stats) in zip(axes, panels, strict=True):
            _bars(ax, names, colors, stats, title, ylabel)
            if title.startswith("normalised"):
                ax.axhline(1.0, color="#555555", ls="--", lw=0.9)
                ax.text(len(names) - 0.5, 1.0, "uniform", ha="right", va="bottom", fontsize=7.5,
                        color="#555555")
                ax.set_ylim(0, 1.08)
            else:
                ax.axhline(0.0, color="#555555", lw=0.8)
        return to_svg(fig, "entropy")


def rank_profile_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Mean probability of the r-th most likely token against rank r (log y; log x if wide)."""
    series = {}
    for n, ens in ensembles.items():
        prof = mapping(get(ens, "rank_profile"))
        ranks, mean = _finite(seq(prof.get("ranks")), nums(prof.get("mean")))
        # Non-positive probabilities cannot sit on a log axis.
        keep = [(r, m) for r, m in zip(ranks, mean, strict=True) if m > 0 and r > 0]
        if keep:
            series[n] = prof, keep
    if not series:
        return None
    with _figure("rank_profile") as (fig, (ax,)):
        lo_rank, hi_rank = np.inf, 0.0
        for n, (prof, keep) in series.items():
            r = [k for k, _ in keep]
            ax.plot(r, [m for _, m in keep], color=colors[n], lw=1.6, marker="o", ms=2.5)
            ranks = nums(prof.get("ranks"))
            if all(v is not None for v in ranks):
                _band(ax, ranks, nums(prof.get("mean")), nums(prof.get("std")), colors[n],
                      floor=min(m for _, m in keep) / 10)
            lo_rank, hi_rank = min(lo_rank, min(r)), max(hi_rank, max(r))
        _log_axis(ax, "y")
        if hi_rank / lo_rank >= 100:
            _log_axis(ax, "x")
        ax.set_xlabel("rank of the token in the predicted distribution")
        ax.set_ylabel("mean probability")
        ax.set_title("rank profile (a flat line is a uniform prediction)")
        _ensemble_legend(fig, list(series), colors)
        return to_svg(fig, "rank_profile")


def disagreement_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """JS distance between seeds against top-p mass kept, band = std over pairs (Figure 1)."""
    present = {n: e for n, e in ensembles.items() if get(e, "disagreement") is not None}
    if not present:
        return None
    missing = []
    with _figure("disagreement") as (fig, (ax,)):
        for n, ens in present.items():
            entries = seq(get(ens, "disagreement", "js_distance"))
            ps = nums([get(e, "top_p") for e in entries])
            means = nums([get(e, "mean") for e in entries])
            stds = nums([get(e, "std") for e in entries])
            order = sorted(range(len(ps)), key=lambda i: (ps[i] is None, ps[i] or 0.0))
            ps, means, stds = ([v[i] for i in order] for v in (ps, means, stds))
            x, y = _finite(ps, means)
            if not x:
                missing.append(n)  # one member: no pairs, the distance is not applicable
                continue
            ax.plot(x, y, color=colors[n], lw=1.8, marker="o", ms=3.5)
            if all(p is not None for p in ps):
                _band(ax, ps, means, stds, colors[n])
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("top-p probability mass kept")
        ax.set_ylabel("JS distance between seeds")
        ax.set_title("inter-seed disagreement (band: ± std over member pairs)")
        _ensemble_legend(fig, list(present), colors, missing=missing)
        return to_svg(fig, "disagreement")


_STYLE_KEYS = (("mean", "-", "between seeds (± std)"), ("null", "--", "null (shuffled rows)"),
               ("init", ":", "at initialisation"), ("chance", "-.", "chance"))


def overlap_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Top-k neighbour overlap between seeds against k (log x), with null, init and chance."""
    present = {}
    for n, ens in ensembles.items():
        entries = seq(get(ens, "static_embeddings", "topk_overlap"))
        if entries:
            present[n] = entries
    if not present:
        return None
    missing = []
    with _figure("embedding_overlap", height=3.4) as (fig, (ax,)):
        for n, entries in present.items():
            entries = sorted(entries, key=lambda e: num(get(e, "k")) or 0.0)
            ks = nums([get(e, "k") for e in entries])
            drawn = False
            for key, style, _ in _STYLE_KEYS:
                x, y = _finite(ks, nums([get(e, key) for e in entries]))
                if x:
                    drawn = True
                    ax.plot(x, y, color=colors[n], ls=style, lw=1.8 if key == "mean" else 1.1,
                            marker="o" if key == "mean" else None, ms=3)
            if all(k is not None for k in ks):
                _band(ax, ks, nums([get(e, "mean") for e in entries]),
                      nums([get(e, "std") for e in entries]), colors[n])
            if not drawn:
                missing.append(n)
        _log_axis(ax, "x")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("k (nearest neighbours compared)")
        ax.set_ylabel("top-k neighbour overlap")
        ax.set_title("static-embedding neighbourhoods shared between seeds")
        keys = [Line2D([], [], color="#333333", ls=s, lw=1.4, label=t) for _, s, t in _STYLE_KEYS]
        _ensemble_legend(fig, list(present), colors, extra=keys, missing=missing)
        return to_svg(fig, "embedding_overlap")


def group_order(groups: Sequence[str]) -> list[str]:
    """Fisher groups in model order: embeddings, layer.0..N numerically, then the rest."""
    def key(item: tuple[int, str]) -> tuple[int, float, int]:
        pos, g = item
        if g == "embeddings":
            return (0, 0.0, pos)
        m = re.fullmatch(r"layer\.(\d+)", g)
        if m:
            return (1, float(m.group(1)), pos)
        return (2, 0.0, pos)

    unique = list(dict.fromkeys(groups))
    return [g for _, g in sorted(enumerate(unique), key=key)]


def _fisher_panels(ensembles: Ensembles, untied_key: str, tied_key: str
                   ) -> list[tuple[str, dict[str, Mapping[str, Any]]]]:
    """[(title, {ensemble: {group: stat}})]: untied attribution, plus tied when any is tied."""
    untied = {n: mapping(get(e, "fisher", untied_key)) for n, e in ensembles.items()}
    panels = [("untied attribution", untied)]
    if any(get(e, "fisher", "tied") is True for e in ensembles.values()):
        # An ensemble without tied weights has one attribution: show it in both panels.
        tied = {n: mapping(get(e, "fisher", tied_key)) if get(e, "fisher", "tied") is True
                else untied[n] for n, e in ensembles.items()}
        panels.append(("tied matrix counted once (under embeddings)", tied))
    return panels


def _dodged(ax: Axes, groups: Sequence[str], names: Sequence[str], colors: Mapping[str, str],
            shares: Mapping[str, Mapping[str, Any]], bars: bool) -> None:
    """Per group, one mark per ensemble side by side, with std error bars and member dots."""
    width = 0.8 / max(len(names), 1)
    for j, n in enumerate(names):
        xs, means, stds = [], [], []
        for i, g in enumerate(groups):
            mean, std, members = _stat(shares[n].get(g))
            if mean is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            means.append(mean)
            stds.append(std if std is not None else np.nan)  # one member: no error bar
            if members and len(members) > 1:
                ax.scatter([x] * len(members), members, s=7, color="#222222", zorder=3,
                           linewidths=0)
        if not xs:
            continue
        if bars:
            ax.bar(xs, means, width=width * 0.92, color=colors[n], alpha=0.85)
            ax.errorbar(xs, means, yerr=stds, fmt="none", color="#222222", capsize=2.5, lw=1)
        else:
            ax.errorbar(xs, means, yerr=stds, color=colors[n], marker="o", ms=3.5, lw=1.4,
                        capsize=2.5)
    crowded = len(groups) > 6
    ax.set_xticks(range(len(groups)), [label(g) for g in groups], rotation=35 if crowded else 0,
                  ha="right" if crowded else "center")
    ax.set_ylim(0, 1.0)
    ax.grid(axis="x", visible=False)


def _fisher_figure(name: str, ensembles: Ensembles, colors: Mapping[str, str], untied: str,
                   tied: str, groups_of: Callable[[dict[str, Mapping[str, Any]]], list[str]],
                   bars: bool) -> str | None:
    present = {n: e for n, e in ensembles.items() if get(e, "fisher") is not None}
    panels = _fisher_panels(present, untied, tied)
    if not any(panels[0][1].values()):
        return None
    with _figure(name, ncols=len(panels), height=3.2) as (fig, axes):
        for ax, (title, shares) in zip(axes, panels, strict=True):
            _dodged(ax, groups_of(shares), list(present), colors, shares, bars)
            ax.set_title(title)
        axes[0].set_ylabel("share of Fisher information")
        _ensemble_legend(fig, list(present), colors)
        return to_svg(fig, name)


def fisher_coarse_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Share of Fisher information in embeddings / body / head per ensemble (Figure 2)."""
    return _fisher_figure("fisher_coarse", ensembles, colors, "coarse", "coarse_tied",
                          lambda shares: list(COARSE_GROUPS), bars=True)


def fisher_layers_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Share of Fisher information per layer group per ensemble (Figure 3)."""
    def groups_of(shares: dict[str, Mapping[str, Any]]) -> list[str]:
        listed = [g for e in ensembles.values() for g in seq(get(e, "fisher", "groups"))
                  if isinstance(g, str)]
        return group_order(listed + [g for s in shares.values() for g in s])

    return _fisher_figure("fisher_layers", ensembles, colors, "share", "share_tied", groups_of,
                          bars=False)


def contextual_figure(ensembles: Ensembles, colors: Mapping[str, str]) -> str | None:
    """Linear CKA and kNN overlap of contextual embeddings between seeds, per layer."""
    present = {n: seq(get(e, "contextual_embeddings", "layers")) for n, e in ensembles.items()}
    present = {n: layers for n, layers in present.items() if layers}
    if not present:
        return None
    metrics = (("linear_cka", "linear CKA between seeds"),
               ("knn_overlap", "kNN overlap between seeds"))
    drawn: set[str] = set()
    with _figure("contextual_cka", ncols=2, height=3.0) as (fig, axes):
        for ax, (key, title) in zip(axes, metrics, strict=True):
            for n, layers in present.items():
                layers = sorted(layers, key=lambda e: num(get(e, "layer")) or 0.0)
                xs = nums([get(e, "layer") for e in layers])
                means = nums([get(e, key, "mean") for e in layers])
                x, y = _finite(xs, means)
                if not x:
                    continue
                drawn.add(n)
                ax.plot(x, y, color=colors[n], marker="o", ms=3.5, lw=1.6)
                if all(v is not None for v in xs):
                    _band(ax, xs, means, nums([get(e, key, "std") for e in layers]), colors[n])
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("layer")
            ax.set_title(title)
            ax.xaxis.get_major_locator().set_params(integer=True)
        _ensemble_legend(fig, list(present), colors,
                         missing=[n for n in present if n not in drawn])
        return to_svg(fig, "contextual_cka")
