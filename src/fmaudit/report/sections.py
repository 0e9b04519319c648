"""report.json -> :class:`Document`: the summary, one section per analysis, and provenance.

Each builder reads only the report dict, tolerates null or missing values (they print as n/a),
and returns None when its analysis is absent from every ensemble, so the section is left out.
Statistics print as ``mean ± std`` (std over members, or over member pairs for pairwise metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fmaudit.report import figures
from fmaudit.report.document import Align, Block, Code, Document, Figure, Paragraph, Section, Table
from fmaudit.report.values import (
    NA,
    find_k,
    find_top_p,
    fmt_num,
    fmt_seconds,
    fmt_stat,
    fmt_text,
    get,
    mapping,
    num,
    seq,
)

Ensembles = Mapping[str, Mapping[str, Any]]

INTROS = {
    "summary": (
        "One row per ensemble; each cell is the mean over members ± the sample standard "
        "deviation (over member pairs for pairwise metrics). n/a means not applicable, for "
        "example disagreement within a one-member ensemble, or not computed."
    ),
    "entropy": (
        "Predictive entropy measures how spread out a model's prediction for a masked token is: "
        "normalised entropy divides it by log2 of the vocabulary size, so 1.0 is a uniform guess "
        "over every token. Read it with the context gain, the bits saved over a context-free "
        "unigram guess: high entropy with near-zero gain means the model learnt little beyond "
        "token frequencies."
    ),
    "disagreement": (
        "The Jensen-Shannon distance measures how differently two members, identical except for "
        "their random seed, predict the same masked token (0 identical, 1 disjoint), after each "
        "prediction is cut to its top-p probability mass. A curve that stays high as more mass "
        "is kept means the seeds disagree even about the likely tokens; well-determined models "
        "sit low everywhere."
    ),
    "embeddings": (
        "Embedding instability asks whether seeds learn the same static token embeddings: top-k "
        "overlap is the share of each token's k nearest neighbours two seeds have in common, "
        "and Procrustes disparity and CKA compare whole embedding matrices. Compare each value "
        "with its null (rows shuffled) and init (the same models before training): a value near "
        "them means training produced no geometry the seeds share."
    ),
    "fisher": (
        "The Fisher share is the fraction of the diagonal Fisher information (the expected "
        "squared gradient of the log-likelihood) that falls in each parameter group, so it shows "
        "where the training signal sits. A share concentrated in the embeddings rather than the "
        "transformer body means the model mostly learns token statistics, not context."
    ),
    "contextual": (
        "Contextual CKA compares the hidden states two seeds give to the same tokens, layer by "
        "layer (1 the same representation up to rotation and scale, 0 unrelated). Agreement "
        "that decays with depth means the seeds build different contextual features on top of "
        "similar inputs."
    ),
    "provenance": (
        "Where every number above came from: the models and their resolved revisions, the "
        "evaluation corpus and its fingerprint, the command, the settings and the versions. "
        "Re-running the command on the same inputs should reproduce the report."
    ),
}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1,
           caption: str = "", md: bool = True, html: bool = True) -> Table:
    """A table whose first ``left`` columns are text (left-aligned) and the rest numbers."""
    align: list[Align] = ["left" if i < left else "right" for i in range(len(headers))]
    return Table(list(headers), [list(r) for r in rows], align, caption, md, html)


def _members(ens: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [mapping(m) for m in seq(get(ens, "members"))]


def _has(ensembles: Ensembles, key: str) -> dict[str, Mapping[str, Any]]:
    """The ensembles whose object carries analysis ``key`` (absent = not run)."""
    return {n: e for n, e in ensembles.items() if get(e, key) is not None}


def _figure_block(name: str, draw: Callable[[], str | None], caption: str) -> list[Block]:
    """The figure ``draw`` makes (none when it has nothing to show). Values the validator
    accepts can still be beyond what matplotlib can lay out (a finite 1.7e308 overflows its
    tick arithmetic): the figure is then left out with a note, never the whole render."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # the overflow is reported below
            svg = draw()
    except (OverflowError, ValueError) as exc:
        return [Paragraph(f"Figure {name} is left out: its values cannot be drawn "
                          f"({type(exc).__name__}: {exc}).")]
    return [] if svg is None else [Figure(name, svg, caption)]


# --- summary -------------------------------------------------------------------------------------

def summary_section(report: Mapping[str, Any], ensembles: Ensembles) -> Section:
    """The table up front (plus the gate verdict when the report carries one).

    Columns of an analysis that no ensemble ran are left out; a null value prints n/a.
    """
    def js(p: float) -> Callable[[Mapping[str, Any]], str]:
        return lambda e: fmt_stat(find_top_p(get(e, "disagreement", "js_distance"), p))

    def top10(key: str | None) -> Callable[[Mapping[str, Any]], str]:
        def cell(e: Mapping[str, Any]) -> str:
            entry = find_k(get(e, "static_embeddings", "topk_overlap"), 10)
            return fmt_stat(entry) if key is None else fmt_num(num(entry.get(key)), 3)
        return cell

    def fisher(group: str) -> Callable[[Mapping[str, Any]], str]:
        return lambda e: fmt_stat(get(e, "fisher", "coarse", group))

    # (analysis key that must be present in some ensemble, header, cell)
    columns = [
        ("entropy", "normalised entropy", lambda e: fmt_stat(get(e, "entropy", "normalized"))),
        ("context_gain_bits", "context gain (bits)",
         lambda e: fmt_stat(get(e, "context_gain_bits"))),
        ("disagreement", "JS distance p=1.0", js(1.0)),
        ("disagreement", "JS distance p=0.5", js(0.5)),
        ("static_embeddings", "top-10 overlap", top10(None)),
        ("static_embeddings", "chance", top10("chance")),
        ("static_embeddings", "init", top10("init")),
        *(("fisher", f"Fisher {g}", fisher(g)) for g in figures.COARSE_GROUPS),
    ]
    columns = [c for c in columns if _has(ensembles, c[0])]
    rows = [[n, fmt_num(len(_members(e))), *(cell(e) for _, _, cell in columns)]
            for n, e in ensembles.items()]
    blocks: list[Block] = [_table(["ensemble", "members", *(h for _, h, _ in columns)], rows)]
    blocks += _gate_blocks(report.get("gate"))
    return Section("summary", "Summary", INTROS["summary"], blocks)


def _gate_blocks(gate: Any) -> list[Block]:
    if not isinstance(gate, Mapping):
        return []
    checks = [mapping(c) for c in seq(gate.get("checks"))]
    failed = [c for c in checks if c.get("passed") is False]
    passed = gate.get("passed")
    verdict = {True: "PASSED", False: "FAILED"}.get(passed, NA) if isinstance(passed, bool) else NA
    text = (f"Gate: {verdict} (policy {fmt_text(gate.get('policy'))}; "
            f"{len(failed)} of {len(checks)} checks failed).")
    tone = "pass" if passed is True else "fail" if passed is False else ""
    blocks: list[Block] = [Paragraph(text, tone=tone)]

    def rows(cs: list[Mapping[str, Any]]) -> list[list[str]]:
        return [["pass" if c.get("passed") is True else "FAIL" if c.get("passed") is False
                 else NA, fmt_text(c.get("ensemble")), fmt_text(c.get("metric")),
                 fmt_text(c.get("stat")), fmt_text(c.get("value")), fmt_text(c.get("bound")),
                 fmt_text(c.get("message"))] for c in cs]

    headers = ["check", "ensemble", "metric", "stat", "value", "bound", "message"]
    if checks:
        blocks.append(Table(headers, rows(checks), ["left"] * 4 + ["right", "left", "left"],
                            "Gate checks", md=False))
    if failed:  # the short Markdown report lists only what failed
        blocks.append(Table(headers, rows(failed), ["left"] * 4 + ["right", "left", "left"],
                            "Failed gate checks", html=False))
    return blocks


# --- predictive entropy --------------------------------------------------------------------------

_ENTROPY_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("entropy (bits)", lambda e: fmt_stat(get(e, "entropy", "bits"))),
    ("normalised entropy", lambda e: fmt_stat(get(e, "entropy", "normalized"))),
    ("KL to uniform (bits)", lambda e: fmt_stat(get(e, "kl_uniform_bits"))),
    ("cross-entropy (bits)", lambda e: fmt_stat(get(e, "cross_entropy_bits"))),
    ("unigram CE (bits)", lambda e: fmt_num(num(get(e, "unigram_cross_entropy_bits")))),
    ("context gain (bits)", lambda e: fmt_stat(get(e, "context_gain_bits"))),
    ("perplexity", lambda e: fmt_stat(get(e, "perplexity"))),
    ("accuracy", lambda e: fmt_stat(get(e, "accuracy"))),
)
_PREDICTION_KEYS = ("entropy", "rank_profile", "context_gain_bits", "cross_entropy_bits")


def entropy_section(ensembles: Ensembles, colors: Mapping[str, str]) -> Section | None:
    present = {n: e for n, e in ensembles.items() if any(get(e, k) is not None
                                                           for k in _PREDICTION_KEYS)}
    if not present:
        return None
    rows = [[n, *(f(e) for _, f in _ENTROPY_COLUMNS)] for n, e in present.items()]
    blocks: list[Block] = []
    blocks += _figure_block("entropy", lambda: figures.entropy_figure(present, colors),
                            "Normalised entropy and context gain per ensemble: bars are the mean, "
                            "error bars ± std over members, dots the members.")
    blocks += _figure_block("rank_profile", lambda: figures.rank_profile_figure(present, colors),
                            "Mean probability of the r-th most likely token against r (log y); "
                            "band ± std over members.")
    blocks.append(_table(["ensemble", *(h for h, _ in _ENTROPY_COLUMNS)], rows,
                         caption="Predictions on masked positions"))
    sources = sorted({fmt_text(e.get("unigram_source")) for e in present.values()
                      if e.get("unigram_source") is not None})
    if sources:
        blocks.append(Paragraph(f"Unigram reference: {'; '.join(sources)}.", md=False))
    return Section("entropy", "Predictive entropy", INTROS["entropy"], blocks)


# --- disagreement --------------------------------------------------------------------------------

def disagreement_section(ensembles: Ensembles, colors: Mapping[str, str]) -> Section | None:
    present = _has(ensembles, "disagreement")
    if not present:
        return None
    blocks: list[Block] = []
    blocks += _figure_block("disagreement", lambda: figures.disagreement_figure(present, colors),
                            "JS distance between seeds against the top-p probability mass kept "
                            "(the study's Figure 1); band ± std over member pairs.")
    blocks.append(_table(
        ["ensemble", "top-p rule", "pairs", "argmax agreement"],
        [[n, fmt_text(get(e, "disagreement", "top_p_rule")),
          fmt_num(get(e, "disagreement", "pairs")),
          fmt_stat(get(e, "disagreement", "argmax_agreement"))] for n, e in present.items()],
        left=2, caption="Pairs of members compared"))
    top_ps = sorted({p for e in present.values()
                     for p in (num(get(x, "top_p"))
                               for x in seq(get(e, "disagreement", "js_distance")))
                     if p is not None})
    if top_ps:
        rows = [[fmt_num(p), *(fmt_stat(find_top_p(get(e, "disagreement", "js_distance"), p))
                               for e in present.values())] for p in top_ps]
        blocks.append(_table(["top-p", *present], rows, left=0,
                             caption="JS distance between seeds (mean ± std over pairs)",
                             md=False))
    return Section("disagreement", "Disagreement between seeds", INTROS["disagreement"], blocks)


# --- static embeddings ---------------------------------------------------------------------------

_PAIRWISE = (("procrustes_disparity", "Procrustes disparity", True),
             ("procrustes_cosine", "Procrustes cosine", False),
             ("linear_cka", "linear CKA", True),
             ("rbf_cka", "RBF CKA", False))


def embeddings_section(ensembles: Ensembles, colors: Mapping[str, str]) -> Section | None:
    present = _has(ensembles, "static_embeddings")
    if not present:
        return None
    blocks: list[Block] = []
    blocks += _figure_block("embedding_overlap", lambda: figures.overlap_figure(present, colors),
                            "Top-k neighbour overlap between seeds against k (log x): solid "
                            "between seeds (band ± std over pairs), dashed null, dotted at "
                            "initialisation, dash-dot chance.")
    rows = []
    for n, e in present.items():
        se = mapping(e.get("static_embeddings"))
        for key, title, in_md in _PAIRWISE:
            stat = mapping(se.get(key))
            if key in se or in_md:
                rows.append((in_md, [n, title, fmt_stat(stat), fmt_num(num(stat.get("null"))),
                                     fmt_num(num(stat.get("init")))]))
    headers = ["ensemble", "metric", "between seeds", "null", "init"]
    blocks.append(_table(headers, [r for _, r in rows], left=2,
                         caption="Whole-matrix comparisons between seeds", md=False))
    blocks.append(_table(headers, [r for in_md, r in rows if in_md], left=2,
                         caption="Whole-matrix comparisons between seeds", html=False))
    overlap_rows = []
    for n, e in present.items():
        for x in seq(get(e, "static_embeddings", "topk_overlap")):
            overlap_rows.append([n, fmt_num(num(get(x, "k"))), fmt_stat(x),
                                 fmt_num(num(get(x, "chance"))), fmt_num(num(get(x, "null"))),
                                 fmt_num(num(get(x, "init")))])
    if overlap_rows:
        blocks.append(_table(["ensemble", "k", "overlap", "chance", "null", "init"], overlap_rows,
                             caption="Top-k neighbour overlap", md=False))
    rows_note = ", ".join(f"{n}: {fmt_num(get(e, 'static_embeddings', 'rows'))}"
                          for n, e in present.items())
    bandwidths = sorted({fmt_text(get(e, "static_embeddings", "rbf_cka", "bandwidth"))
                         for e in present.values()
                         if get(e, "static_embeddings", "rbf_cka", "bandwidth") is not None})
    note = f"Embedding rows compared: {rows_note}."
    if bandwidths:
        note += f" RBF bandwidth: {'; '.join(bandwidths)}."
    blocks.append(Paragraph(note, md=False))
    return Section("embeddings", "Embedding instability", INTROS["embeddings"], blocks)


# --- Fisher --------------------------------------------------------------------------------------

def fisher_section(ensembles: Ensembles, colors: Mapping[str, str]) -> Section | None:
    present = _has(ensembles, "fisher")
    if not present:
        return None
    any_tied = any(get(e, "fisher", "tied") is True for e in present.values())
    blocks: list[Block] = []
    side = " Left: untied attribution; right: the tied matrix counted once." if any_tied else ""
    blocks += _figure_block("fisher_coarse", lambda: figures.fisher_coarse_figure(present, colors),
                            "Share of Fisher information per coarse group (the study's Figure 2): "
                            "bars mean, error bars ± std, dots members." + side)
    blocks += _figure_block("fisher_layers", lambda: figures.fisher_layers_figure(present, colors),
                            "Share of Fisher information per layer (the study's Figure 3), "
                            "± std over members." + side)
    rows = []
    for n, e in present.items():
        f = mapping(e.get("fisher"))
        variants = [("untied", "coarse")]
        if f.get("tied") is True:
            variants.append(("tied once", "coarse_tied"))
        for attribution, key in variants:
            coarse = mapping(f.get(key))
            rows.append([n, attribution, *(fmt_stat(coarse.get(g))
                                           for g in figures.COARSE_GROUPS)])
    blocks.append(_table(["ensemble", "attribution", *figures.COARSE_GROUPS], rows, left=2,
                         caption="Share of Fisher information per coarse group"))
    # Per-layer table (HTML only): one column per ensemble and attribution.
    columns = []
    for n, e in present.items():
        columns.append((n if not any_tied else f"{n} (untied)", mapping(get(e, "fisher", "share"))))
        if get(e, "fisher", "tied") is True:
            columns.append((f"{n} (tied once)", mapping(get(e, "fisher", "share_tied"))))
    groups = figures.group_order([g for e in present.values()
                                  for g in seq(get(e, "fisher", "groups")) if isinstance(g, str)]
                                 + [g for _, share in columns for g in share])
    if groups:
        blocks.append(_table(["group", *(c for c, _ in columns)],
                             [[g, *(fmt_stat(share.get(g)) for _, share in columns)]
                              for g in groups], caption="Share per layer group", md=False))
    settings = sorted({f"{fmt_text(get(e, 'fisher', 'estimator'))} estimator, "
                       f"{fmt_text(get(e, 'fisher', 'labels'))} labels"
                       for e in present.values()})
    tokens = ", ".join(f"{n}: {fmt_num(get(e, 'fisher', 'tokens'))}" for n, e in present.items())
    blocks.append(Paragraph(f"{'; '.join(settings)}; tokens: {tokens}.", md=False))
    notes = sorted({fmt_text(get(e, "fisher", "note")) for e in present.values()
                    if get(e, "fisher", "note") is not None})
    blocks += [Paragraph(note, md=False) for note in notes]
    return Section("fisher", "Fisher information", INTROS["fisher"], blocks)


# --- contextual embeddings -----------------------------------------------------------------------

def contextual_section(ensembles: Ensembles, colors: Mapping[str, str]) -> Section | None:
    present = _has(ensembles, "contextual_embeddings")
    if not present:
        return None
    blocks: list[Block] = []
    blocks += _figure_block("contextual_cka", lambda: figures.contextual_figure(present, colors),
                            "Linear CKA and kNN overlap of hidden states between seeds per layer; "
                            "band ± std over member pairs.")
    by_layer: dict[float, dict[str, Mapping[str, Any]]] = {}
    for n, e in present.items():
        for x in seq(get(e, "contextual_embeddings", "layers")):
            layer = num(get(x, "layer"))
            if layer is not None:
                by_layer.setdefault(layer, {})[n] = mapping(x)
    if by_layer:
        rows = [[fmt_num(int(layer) if layer.is_integer() else layer),
                 *(fmt_stat(get(by_layer[layer].get(n), "linear_cka")) for n in present)]
                for layer in sorted(by_layer)]
        blocks.append(_table(["layer", *present], rows, left=0,
                             caption="Linear CKA between seeds per layer"))
        rows = [[fmt_num(int(layer) if layer.is_integer() else layer),
                 *(fmt_stat(get(by_layer[layer].get(n), "knn_overlap")) for n in present)]
                for layer in sorted(by_layer)]
        blocks.append(_table(["layer", *present], rows, left=0,
                             caption="kNN overlap between seeds per layer", md=False))
    blocks.append(_table(
        ["ensemble", "anisotropy", "effective rank"],
        [[n, fmt_stat(get(e, "contextual_embeddings", "anisotropy")),
          fmt_stat(get(e, "contextual_embeddings", "effective_rank"))]
         for n, e in present.items()], caption="Geometry of the hidden states",
        md=False))
    return Section("contextual", "Contextual embeddings", INTROS["contextual"], blocks)


# --- provenance ----------------------------------------------------------------------------------

def provenance_section(report: Mapping[str, Any], ensembles: Ensembles) -> Section:
    blocks: list[Block] = []
    command = report.get("command")
    if command is not None:
        blocks.append(Code(str(command)))
    corpora = []
    for n, e in ensembles.items():
        c = mapping(e.get("corpus"))
        tokenizer = get(e, "tokenizer", "spec") or get(e, "tokenizer", "class")
        corpora.append([n, fmt_text(c.get("name")), fmt_text(c.get("kind")),
                        fmt_text(c.get("split")), fmt_text(tokenizer),
                        fmt_num(e.get("vocab_size")), fmt_num(c.get("windows")),
                        fmt_num(c.get("positions")), fmt_num(num(c.get("unk_fraction"))),
                        fmt_text(c.get("fingerprint"))])
    # The fingerprint is an identifier, not a number: left-aligned like the names.
    blocks.append(Table(["ensemble", "corpus", "kind", "split", "tokenizer", "vocab", "windows",
                         "positions", "unk fraction", "fingerprint"], corpora,
                        ["left"] * 5 + ["right"] * 4 + ["left"], "Evaluation corpora"))
    paths = [[n, fmt_text(get(e, "corpus", "path"))] for n, e in ensembles.items()]
    blocks.append(_table(["ensemble", "corpus path"], paths, left=2, caption="Corpus files",
                         md=False))
    members_md, members_html = [], []
    for n, e in ensembles.items():
        for m in _members(e):
            short = [n, fmt_text(m.get("id")), fmt_text(m.get("revision")),
                     fmt_num(m.get("parameters")), fmt_num(m.get("seed"))]
            members_md.append(short)
            members_html.append([*short[:3], fmt_text(m.get("architecture")),
                                 fmt_text(m.get("objective") or e.get("objective")),
                                 *short[3:], fmt_text(m.get("path")), fmt_text(m.get("init"))])
    md_headers = ["ensemble", "model", "revision", "parameters", "seed"]
    blocks.append(Table(md_headers, members_md, ["left"] * 3 + ["right"] * 2, "Members",
                        html=False))
    blocks.append(Table([*md_headers[:3], "architecture", "objective", *md_headers[3:], "path",
                         "init"], members_html,
                        ["left"] * 5 + ["right"] * 2 + ["left"] * 2, "Members", md=False))

    timing = mapping(report.get("timing"))
    passes = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in mapping(timing.get("passes")).items())
    when = fmt_text(report.get("created"))
    blocks.append(Paragraph(f"Created {when}; took {fmt_seconds(timing.get('seconds'))}"
                            + (f" ({passes})." if passes else ".")))
    tool = mapping(report.get("tool"))
    versions = "; ".join(f"{fmt_text(tool.get('name') or 'fmaudit') if k == 'version' else k} "
                         f"{fmt_text(v)}" for k, v in tool.items() if k != "name")
    if versions:
        blocks.append(Paragraph(f"Versions: {versions}."))
    settings = mapping(report.get("settings"))
    if settings:
        blocks.append(Paragraph("Settings: " + "; ".join(f"{k} = {fmt_text(v)}"
                                                          for k, v in settings.items()) + "."))
    return Section("provenance", "Provenance", INTROS["provenance"], blocks)


# --- document ------------------------------------------------------------------------------------

def ensembles_of(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{name: ensemble object} in report order (the key is the name shown everywhere)."""
    return {str(k): mapping(v) for k, v in mapping(report.get("ensembles")).items()}


def build_document(report: Mapping[str, Any]) -> Document:
    """Every section, in the order of the issue: summary, analyses, provenance."""
    ensembles = ensembles_of(report)
    colors = figures.ensemble_colors(list(ensembles))
    sections = [
        summary_section(report, ensembles),
        entropy_section(ensembles, colors),
        disagreement_section(ensembles, colors),
        embeddings_section(ensembles, colors),
        fisher_section(ensembles, colors),
        contextual_section(ensembles, colors),
        provenance_section(report, ensembles),
    ]
    names = ", ".join(ensembles) or "no ensembles"
    tool = mapping(report.get("tool"))
    subtitle = (f"{len(ensembles)} ensemble{'s' if len(ensembles) != 1 else ''} ({names}) · "
                f"created {fmt_text(report.get('created'))} · "
                f"{fmt_text(tool.get('name') or 'fmaudit')} {fmt_text(tool.get('version'))}")
    return Document("fmaudit report", subtitle, [s for s in sections if s is not None], colors)
