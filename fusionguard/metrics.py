"""Ranking, integrity and modality-contribution measures: the one implementation of each.

Every per-query measure works on a `QueryGroups`, built once from the dataset's `query_id`,
`item_id` and `label` columns. It sorts the rows by (query, item_id) a single time and keeps the
permutation and the query offsets, so each measure is a handful of vectorised numpy calls over
all queries at once (and over M score vectors at once where that is useful) instead of a Python
loop per query.

Tie-breaking (NDCG, MRR). trec_eval re-sorts each query's results by score descending and breaks
ties by *descending* docno (`comp_sim_docno` in `form_res_rels.c` returns
`strcmp(ptr2->docno, ptr1->docno)`: the arguments are reversed). We do the same with `item_id`:
among equal scores the larger item_id ranks first, so our NDCG@k equals trec_eval's `ndcg_cut.k`
on the same run. One caveat: trec_eval compares docnos as strings; string item_ids are compared
the same way (code-point order, which equals strcmp's byte order for UTF-8), but integer item_ids
are compared as numbers, so two tied integer ids such as 9 and 10 are ordered 10 before 9 here
while trec_eval, seeing the strings "9" and "10", would put "9" first. Pass string ids when you
need trec_eval's exact order on integer ids. Also, trec_eval keeps each score as a C `float`, so
float64 scores that differ only beyond single precision tie there but not here; model scores are
float32 by contract, so the two agree on them.

Queries without any relevant item (label > 0) get NaN from NDCG and MRR and are counted by
`QueryGroups.n_excluded`, rather than trec_eval's 0, so they cannot drag a mean down or up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fusionguard.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "QueryGroups",
    "ablation_drop",
    "attention_entropy",
    "attention_mass",
    "mrr",
    "ndcg_at_k",
    "pearson",
    "shapley_values",
    "spearman_per_query",
]

Gain = Literal["linear", "exponential"]
MAX_EXPONENTIAL_LABEL = 30  # 2^30 - 1 keeps a DCG sum exact in float64 next to grade-1 gains


def _as_1d(name: str, values: object, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {arr.shape}; pass one value per row")
    if n is not None and arr.shape[0] != n:
        raise InvalidInputError(f"{name} has {arr.shape[0]} rows but {n} were expected; pass one value per row")
    return arr


def _finite_float(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InvalidInputError(f"{name} holds {bad} NaN or infinite value(s); fix or drop those rows first")
    return arr


@dataclass(frozen=True, eq=False)
class QueryGroups:
    """Rows grouped by query, sorted once by (query, item_id).

    Build with `QueryGroups.from_arrays`. Arrays whose name ends in `_sorted` are in the sorted
    order; `sort(x)` maps a per-row array from the caller's order into it.
    """

    query_ids: np.ndarray  # (n_queries,) unique query ids, ascending
    order: np.ndarray  # (N,) int64: sorted position j holds caller row order[j]
    offsets: np.ndarray  # (n_queries + 1,) int64: query q occupies sorted rows offsets[q]:offsets[q+1]
    query_index_sorted: np.ndarray  # (N,) int64: index into query_ids of each sorted row
    item_id_sorted: np.ndarray  # (N,) item ids, ascending within each query
    label_sorted: np.ndarray  # (N,) float64 graded relevance >= 0
    position_sorted: np.ndarray  # (N,) int64: 0-based position of each sorted row within its query
    ideal_label_sorted: np.ndarray = field(repr=False)  # (N,) labels sorted descending within each query
    has_relevant: np.ndarray = field(repr=False)  # (n_queries,) bool: query has an item with label > 0

    @classmethod
    def from_arrays(cls, query_id: object, item_id: object, label: object) -> QueryGroups:
        """Group rows by query.

        Args:
            query_id: (N,) query id per row (integers or strings).
            item_id: (N,) item id per row, unique within a query (integers or strings).
            label: (N,) graded relevance per row, finite and >= 0.

        Raises:
            InvalidInputError: on shape mismatch, empty input, negative/non-finite labels,
                ids that cannot be ordered, or a duplicated (query, item) pair.
        """
        qid = _as_1d("query_id", query_id)
        n = qid.shape[0]
        iid = _as_1d("item_id", item_id, n)
        lab = _finite_float("label", _as_1d("label", label, n))
        if n == 0:
            raise InvalidInputError("no rows: query_id, item_id and label are empty; pass at least one row")
        if np.any(lab < 0):
            raise InvalidInputError(
                f"label holds {int(np.count_nonzero(lab < 0))} negative value(s); relevance grades must be >= 0"
            )
        try:
            query_ids, q_inv = np.unique(qid, return_inverse=True)
            _, i_inv = np.unique(iid, return_inverse=True)
        except TypeError as exc:
            raise InvalidInputError(
                f"query_id/item_id mix types that cannot be ordered ({exc}); use all integers or all strings"
            ) from exc
        q_inv = q_inv.reshape(-1).astype(np.int64)
        i_inv = i_inv.reshape(-1).astype(np.int64)
        order = np.lexsort((i_inv, q_inv))
        q_sorted = q_inv[order]
        i_sorted = i_inv[order]
        dup = (q_sorted[1:] == q_sorted[:-1]) & (i_sorted[1:] == i_sorted[:-1])
        if np.any(dup):
            j = int(np.flatnonzero(dup)[0])
            raise InvalidInputError(
                f"{int(np.count_nonzero(dup))} duplicated (query_id, item_id) pair(s), first "
                f"({query_ids[q_sorted[j]]!r}, {iid[order[j]]!r}); keep one row per pair"
            )
        sizes = np.bincount(q_sorted, minlength=query_ids.shape[0])
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        position = np.arange(n, dtype=np.int64) - offsets[q_sorted]
        label_sorted = lab[order]
        ideal = label_sorted[np.lexsort((-label_sorted, q_sorted))]
        has_relevant = np.maximum.reduceat(label_sorted, offsets[:-1]) > 0
        return cls(
            query_ids=query_ids,
            order=order.astype(np.int64),
            offsets=offsets,
            query_index_sorted=q_sorted,
            item_id_sorted=iid[order],
            label_sorted=label_sorted,
            position_sorted=position,
            ideal_label_sorted=ideal,
            has_relevant=has_relevant,
        )

    @property
    def n_rows(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_queries(self) -> int:
        return int(self.query_ids.shape[0])

    @property
    def n_excluded(self) -> int:
        """Queries without any relevant item (label > 0): NDCG/MRR are NaN for them."""
        return int(np.count_nonzero(~self.has_relevant))

    @property
    def sizes(self) -> np.ndarray:
        """(n_queries,) candidates per query."""
        return np.diff(self.offsets)

    def sort(self, values: object) -> np.ndarray:
        """Map a per-row array (..., N) from the caller's row order into the sorted order."""
        arr = np.asarray(values)
        if arr.ndim == 0 or arr.shape[-1] != self.n_rows:
            raise InvalidInputError(
                f"per-row array has shape {arr.shape} but the groups hold {self.n_rows} rows; "
                "pass one value per row, in the same row order as query_id/item_id/label"
            )
        return arr[..., self.order]

    def per_query_sum(self, values_sorted: np.ndarray) -> np.ndarray:
        """Sum a sorted per-row array (..., N) within each query -> (..., n_queries)."""
        return np.add.reduceat(values_sorted, self.offsets[:-1], axis=-1)


def _scores_2d(groups: QueryGroups, scores: object) -> tuple[np.ndarray, bool]:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise InvalidInputError(f"scores must have shape (N,) or (M, N), got {arr.shape}")
    squeeze = arr.ndim == 1
    arr2 = _finite_float("scores", arr.reshape(1, -1) if squeeze else arr)
    return groups.sort(arr2), squeeze


def _ranking(groups: QueryGroups, scores_sorted: np.ndarray) -> np.ndarray:
    """Ranked sorted-row indices per query: (M, N), query blocks at the same offsets as `groups`.

    Within a query: score descending, ties by item_id descending (trec_eval's comp_sim_docno).
    Rows are sorted by item_id ascending within a query, so descending item_id = descending
    position, which a stable sort over the position-reversed rows gives for free.
    """
    m, n = scores_sorted.shape
    sizes = groups.sizes
    width = int(sizes.max())
    q = groups.query_index_sorted
    if groups.n_queries * width <= 4 * n:
        # Pad to (M, Q, L) and sort each query's short row: N log L instead of N log N.
        padded = np.full((m, groups.n_queries, width), np.inf)
        padded[:, q, width - 1 - groups.position_sorted] = -scores_sorted  # positions reversed
        slot = np.argsort(padded, axis=-1, kind="stable")  # (M, Q, L); padding (+inf) sorts last
        rows = groups.offsets[:-1, None] + (width - 1 - slot)
        return rows[:, np.arange(width)[None, :] < sizes[:, None]]  # (M, N)
    # Skewed query sizes: one global stable sort on score, then one on (query, score rank).
    rev = -scores_sorted[:, ::-1]  # rows reversed: (query desc, item desc)
    by_score = np.argsort(rev, axis=-1, kind="stable")
    score_rank = np.empty_like(by_score)
    np.put_along_axis(score_rank, by_score, np.broadcast_to(np.arange(n), (m, n)), axis=-1)
    key = q[::-1] * n + score_rank  # unique per row
    return n - 1 - np.argsort(key, axis=-1)


def ranks(groups: QueryGroups, scores: object) -> np.ndarray:
    """Each row's 1-based rank within its query, in the caller's row order: score descending,
    ties by item_id descending (the ranking every measure here uses). Returns (N,) int64."""
    scores_sorted, _ = _scores_2d(groups, np.asarray(scores, dtype=np.float64).reshape(-1))
    ranked = _ranking(groups, scores_sorted)[0]  # sorted-row indices in ranked order, per query block
    rank_sorted = np.empty(groups.n_rows, dtype=np.int64)
    rank_sorted[ranked] = np.arange(groups.n_rows) - np.repeat(groups.offsets[:-1], groups.sizes) + 1
    out = np.empty(groups.n_rows, dtype=np.int64)
    out[groups.order] = rank_sorted
    return out


def _ranked_labels(groups: QueryGroups, scores_sorted: np.ndarray) -> np.ndarray:
    """Labels in ranked order per query, (M, N)."""
    return groups.label_sorted[_ranking(groups, scores_sorted)]


def _gain(labels: np.ndarray, gain: str) -> np.ndarray:
    if gain == "linear":
        return labels
    if gain == "exponential":
        if labels.size and np.max(labels) > MAX_EXPONENTIAL_LABEL:
            raise InvalidInputError(
                f"exponential gain 2^rel - 1 needs labels <= {MAX_EXPONENTIAL_LABEL} (got {np.max(labels):g}): larger "
                "grades swamp every other item in float64 and can overflow; use linear gain or rescale the labels"
            )
        return np.exp2(labels) - 1.0
    raise InvalidInputError(f"unknown gain {gain!r}; use 'linear' (trec_eval ndcg_cut) or 'exponential' (2^rel - 1)")


def ndcg_at_k(groups: QueryGroups, scores: object, k: int = 10, gain: Gain = "linear") -> np.ndarray:
    """NDCG@k per query, trec_eval `ndcg_cut.k` semantics by default.

    DCG@k = sum over the top k ranks r = 1..k of gain(label_r) / log2(r + 1); the ideal DCG@k
    uses all of the query's judged labels sorted descending (every row of the dataset is judged).
    Ranking: score descending, ties broken by item_id descending as trec_eval does (see the
    module docstring for why and for the integer-id caveat).

    Args:
        groups: the rows' query grouping.
        scores: (N,) scores in the caller's row order, or (M, N) for M score vectors at once.
        k: cutoff, >= 1.
        gain: "linear" (gain = label, trec_eval) or "exponential" (2^label - 1).

    Returns:
        (n_queries,) or (M, n_queries) float64 in [0, 1], ordered like `groups.query_ids`;
        NaN for queries without a relevant item (counted by `groups.n_excluded`).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidInputError(f"k must be an integer >= 1, got {k!r}")
    s, squeeze = _scores_2d(groups, scores)
    pos = groups.position_sorted
    discount = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)  # (N,)
    dcg = groups.per_query_sum(_gain(_ranked_labels(groups, s), gain) * discount)  # (M, Q)
    idcg = groups.per_query_sum(_gain(groups.ideal_label_sorted, gain) * discount)  # (Q,)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(groups.has_relevant & (idcg > 0), dcg / idcg, np.nan)
    return out[0] if squeeze else out


def mrr(groups: QueryGroups, scores: object, threshold: float = 1) -> np.ndarray:
    """Reciprocal rank of the first item with label >= threshold, per query (trec_eval recip_rank).

    Same ranking and tie-breaking as `ndcg_at_k`. Accepts (N,) or (M, N) scores.
    NaN for queries with no item at or above the threshold.
    """
    s, squeeze = _scores_2d(groups, scores)
    ranked = _ranked_labels(groups, s)  # (M, N)
    rr = np.where(ranked >= threshold, 1.0 / (groups.position_sorted + 1.0), 0.0)
    best = np.maximum.reduceat(rr, groups.offsets[:-1], axis=-1)
    has = np.maximum.reduceat(groups.label_sorted, groups.offsets[:-1]) >= threshold
    out = np.where(has, best, np.nan)
    return out[0] if squeeze else out


def _average_ranks(groups: QueryGroups, x_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based average ranks within each query (ties share their mean rank), and runs per query."""
    q = groups.query_index_sorted
    o = np.lexsort((x_sorted, q))
    xv = x_sorted[o]
    new_run = np.ones(groups.n_rows, dtype=bool)
    new_run[1:] = (xv[1:] != xv[:-1]) | (q[1:] != q[:-1])  # q[o] == q: queries stay in place
    run = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], groups.n_rows) - 1
    avg_global = (starts + ends) / 2.0
    ranks = np.empty(groups.n_rows, dtype=np.float64)
    ranks[o] = avg_global[run] - groups.offsets[q] + 1.0
    n_runs = np.add.reduceat(new_run.astype(np.int64), groups.offsets[:-1])
    return ranks, n_runs


def spearman_per_query(groups: QueryGroups, a: object, b: object) -> np.ndarray:
    """Spearman rank correlation between two score vectors, within each query.

    Ties get their average rank. Returns (n_queries,), NaN for queries where either vector is
    constant (including single-candidate queries). Average with `np.nanmean` for a summary.
    """
    a_s = groups.sort(_finite_float("a", _as_1d("a", a, groups.n_rows)))
    b_s = groups.sort(_finite_float("b", _as_1d("b", b, groups.n_rows)))
    ra, runs_a = _average_ranks(groups, a_s)
    rb, runs_b = _average_ranks(groups, b_s)
    sizes = groups.sizes.astype(np.float64)
    q = groups.query_index_sorted
    da = ra - (groups.per_query_sum(ra) / sizes)[q]
    db = rb - (groups.per_query_sum(rb) / sizes)[q]
    cov = groups.per_query_sum(da * db)
    var = groups.per_query_sum(da * da) * groups.per_query_sum(db * db)
    valid = (runs_a > 1) & (runs_b > 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(valid, cov / np.sqrt(var), np.nan)
    return np.clip(rho, -1.0, 1.0)


def pearson(a: object, b: object) -> float:
    """Pearson correlation over all rows; NaN when either vector is constant."""
    x = _finite_float("a", _as_1d("a", a))
    y = _finite_float("b", _as_1d("b", b, x.shape[0]))
    if x.shape[0] < 2:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    syy = float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return float("nan")
    return float(np.clip((dx @ dy) / np.sqrt(sxx * syy), -1.0, 1.0))


def ablation_drop(full: object, masked: object) -> np.ndarray:
    """Relative loss per query when a modality is masked: (full - masked) / full.

    Args:
        full: (n_queries,) or (..., n_queries) metric with every input present (e.g. NDCG@k).
        masked: the same metric with one modality masked, broadcastable to `full`.

    Returns:
        float64 array; NaN where `full` is 0 or NaN (the drop is undefined), or `masked` is NaN.
    """
    f = np.asarray(full, dtype=np.float64)
    m = np.asarray(masked, dtype=np.float64)
    try:
        f, m = np.broadcast_arrays(f, m)
    except ValueError as exc:
        raise InvalidInputError(f"full {f.shape} and masked {m.shape} do not line up; pass one value per query") from exc
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(f != 0, (f - m) / f, np.nan)


def shapley_values(
    s_tv: object, s_t: object, s_v: object, s_none: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact two-modality Shapley values and the visual share, per candidate.

    phi_v = ((s_tv - s_t) + (s_v - s_none)) / 2, phi_t = ((s_tv - s_v) + (s_t - s_none)) / 2,
    share = |phi_v| / (|phi_t| + |phi_v|). They satisfy phi_t + phi_v = s_tv - s_none.

    Args:
        s_tv: scores with both modalities present.
        s_t: text present, visual masked.
        s_v: visual present, text masked.
        s_none: both masked. All four broadcastable to one shape, typically (N,).

    Returns:
        (phi_text, phi_visual, visual_share); share is NaN where |phi_t| + |phi_v| == 0.
    """
    try:
        tv, t, v, none = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (s_tv, s_t, s_v, s_none)))
    except ValueError as exc:
        raise InvalidInputError(f"the four score arrays do not line up ({exc}); pass one score per candidate each") from exc
    phi_v = 0.5 * ((tv - t) + (v - none))
    phi_t = 0.5 * ((tv - v) + (t - none))
    denom = np.abs(phi_t) + np.abs(phi_v)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(denom > 0, np.abs(phi_v) / denom, np.nan)
    return phi_t, phi_v, share


def _attention(attention: object) -> np.ndarray:
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 3:
        raise InvalidInputError(f"attention must have shape (N, H, K), got {att.shape}")
    return att


def attention_mass(attention: object, key_range: tuple[int, int]) -> np.ndarray:
    """Attention summed over the half-open key range [start, stop), per row and head.

    Args:
        attention: (N, H, K) softmax weights over K keys.
        key_range: (start, stop) from the contract's `attention_keys`, e.g. the visual keys.

    Returns:
        (N, H) float64.
    """
    att = _attention(attention)
    try:
        start, stop = (int(x) for x in key_range)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"key_range must be a pair (start, stop), got {key_range!r}") from exc
    n_keys = att.shape[2]
    if not 0 <= start < stop <= n_keys:
        raise InvalidInputError(
            f"key_range ({start}, {stop}) does not fit the attention's {n_keys} keys; "
            "it must satisfy 0 <= start < stop <= K (check the contract's attention_keys)"
        )
    return att[:, :, start:stop].sum(axis=2)


def attention_entropy(attention: object) -> np.ndarray:
    """Normalised attention entropy H / log(K) per row and head, in [0, 1] for a distribution.

    0 log 0 counts as 0. Needs K >= 2 (with one key the entropy is always 0 and log K is 0).

    Returns:
        (N, H) float64.
    """
    att = _attention(attention)
    n_keys = att.shape[2]
    if n_keys < 2:
        raise InvalidInputError(f"attention has {n_keys} key(s); normalised entropy needs K >= 2")
    safe = np.where(att > 0, att, 1.0)  # 0 log 0 (and anything <= 0) counts as 1 log 1 = 0
    return -(safe * np.log(safe)).sum(axis=2) / np.log(n_keys)
