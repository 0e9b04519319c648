"""Pure metric functions on tensors, and streaming accumulators whose float64 sums merge
across processes.

* prediction: entropy, KL from uniform, cross-entropy, accuracy, rank profile (per member).
* disagreement: top-p truncation, Jensen-Shannon distance, argmax agreement (member pairs).
* embeddings: k-NN overlap, local Spearman, Procrustes, linear/RBF CKA, anisotropy, effective
  rank.
* fisher: Fisher shares per parameter group.
* stats: ``{"mean", "std", "members"}`` aggregates used by report.json.

Only torch is imported here (no transformers), so the package is cheap to import.
"""

from fmaudit.metrics.base import EmptyAccumulatorError, SumAccumulator
from fmaudit.metrics.disagreement import (
    TOP_P_RULES,
    DisagreementAccumulator,
    argmax_agreement,
    js_distance,
    truncate_top_p,
)
from fmaudit.metrics.embeddings import (
    STATIC_METRICS,
    EmbeddingGeometry,
    anisotropy,
    compare_embeddings,
    compare_members,
    effective_rank,
    knn_indices,
    knn_jaccard,
    linear_cka,
    local_spearman,
    procrustes,
    rbf_cka,
    row_permuted,
    summarize_static,
    topk_overlap,
    topk_overlap_chance,
    usable_rows,
    valid_ks,
)
from fmaudit.metrics.fisher import (
    COARSE_GROUPS,
    coarse_split,
    group_shares,
    shares_over_members,
)
from fmaudit.metrics.prediction import (
    NonFiniteLogitsError,
    PredictionAccumulator,
    cross_entropy_bits,
    entropy_bits,
    kl_uniform_bits,
    normalized_entropy,
    prediction_metrics,
    rank_profile,
    top1_correct,
)
from fmaudit.metrics.stats import (
    finite_or_none,
    mean_std,
    mean_std_members,
    mean_std_pairs,
    mean_std_vectors,
    pair_indices,
)

__all__ = [
    "COARSE_GROUPS",
    "STATIC_METRICS",
    "TOP_P_RULES",
    "DisagreementAccumulator",
    "EmbeddingGeometry",
    "EmptyAccumulatorError",
    "NonFiniteLogitsError",
    "PredictionAccumulator",
    "SumAccumulator",
    "anisotropy",
    "argmax_agreement",
    "coarse_split",
    "compare_embeddings",
    "compare_members",
    "cross_entropy_bits",
    "effective_rank",
    "entropy_bits",
    "finite_or_none",
    "group_shares",
    "js_distance",
    "kl_uniform_bits",
    "knn_indices",
    "knn_jaccard",
    "linear_cka",
    "local_spearman",
    "mean_std",
    "mean_std_members",
    "mean_std_pairs",
    "mean_std_vectors",
    "normalized_entropy",
    "pair_indices",
    "prediction_metrics",
    "procrustes",
    "rank_profile",
    "rbf_cka",
    "row_permuted",
    "shares_over_members",
    "summarize_static",
    "top1_correct",
    "topk_overlap",
    "topk_overlap_chance",
    "truncate_top_p",
    "usable_rows",
    "valid_ks",
]
