"""Statistics over queries and over training seeds: bootstrap CIs, paired randomization test, Holm
correction, effect size; and for experiment grids (seeds x queries): the exact binomial CI of an
escape probability, Fisher's exact test of two escape counts, the hierarchical (seed, then query)
bootstrap and the exact seed-level sign-flip test, none of which treats seeds as zero-variance.

All resampling is vectorised with numpy: the (n_resamples, n) index or sign matrix is drawn in
chunks of about `CHUNK_ELEMENTS` entries (so 10,000 resamples of 10,000 queries need tens of MB,
not gigabytes), each chunk reduced in one call; there is no Python loop over resamples. Every
function takes a `seed` and uses its own `numpy.random.Generator`, so results are reproducible.

Bootstrap means never gather: a chunk's index matrix becomes a (c, n) matrix of resample counts
(one bincount) and the means of every vector are one matrix product counts @ X / n. The sums run
through BLAS, whose summation order can depend on the matrix shapes (chunk size, number of
vectors), so the same resamples give means equal to within a few ulp (relative 1e-12) rather than
bit for bit across chunk sizes or between one vector and several; a fixed call is deterministic.

Per-query metrics use NaN for excluded queries (no relevant item); the functions here drop NaN
values (NaN pairs in the paired variants) before resampling and report how many remain in
`Interval.n`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special

from fusionguard.errors import EvaluationError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "BootstrapSettings",
    "CHUNK_ELEMENTS",
    "Interval",
    "binomial_ci",
    "bootstrap_ci",
    "bootstrap_cis",
    "fisher_exact",
    "hierarchical_bootstrap_ci",
    "SEED_TEST_RESAMPLES",
    "seed_level_test",
    "CountStatistic",
    "count_bootstrap_ci",
    "holm",
    "paired_bootstrap_ci",
    "paired_effect_size",
    "randomization_test",
]

# Entries of the resample matrix drawn at once: 2^22 intp indices + their float64 values ≈ 67 MB.
CHUNK_ELEMENTS = 1 << 22

Statistic = Literal["mean", "median"] | Callable[..., np.ndarray]
Method = Literal["percentile", "bca"]


@dataclass(frozen=True)
class BootstrapSettings:
    """How a bootstrap is drawn; passed by keyword (`settings=`) to every bootstrap CI here."""

    n_resamples: int = 10_000  # bootstrap resamples
    confidence: float = 0.95  # two-sided confidence level
    seed: int = 0  # seed of `numpy.random.default_rng`
    method: Method = "percentile"  # "percentile" or "bca" (the hierarchical bootstrap is percentile only)
    chunk_elements: int = CHUNK_ELEMENTS  # resample-matrix entries drawn per vectorised chunk (memory bound)


DEFAULT_BOOTSTRAP = BootstrapSettings()


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval."""

    estimate: float  # the statistic on the observed data
    low: float
    high: float
    confidence: float  # e.g. 0.95
    n_resamples: int
    method: str  # "percentile" or "bca"
    n: int = 0  # observations used (after dropping NaN)

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _clean(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional (one value per query), got shape {arr.shape}")
    if np.any(np.isinf(arr)):
        raise InvalidInputError(f"{name} holds {int(np.count_nonzero(np.isinf(arr)))} infinite value(s); fix them first")
    kept = arr[~np.isnan(arr)]
    if kept.shape[0] == 0:
        raise EvaluationError(
            f"{name} has no finite values ({arr.shape[0]} given, all NaN); "
            "nothing to estimate (are all queries excluded for lack of a relevant item?)"
        )
    if kept.shape[0] < arr.shape[0]:
        logger.debug("%s: dropped %d NaN value(s)", name, arr.shape[0] - kept.shape[0])
    return kept


def _statistic(statistic: Statistic) -> Callable[[np.ndarray], np.ndarray]:
    """A reducer over the last axis."""
    if statistic == "mean":
        return lambda x: np.mean(x, axis=-1)
    if statistic == "median":
        return lambda x: np.median(x, axis=-1)
    if callable(statistic):
        return lambda x: np.asarray(statistic(x, axis=-1), dtype=np.float64)
    raise InvalidInputError(f"unknown statistic {statistic!r}; use 'mean', 'median' or a callable f(x, axis)")


def _check_common(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise InvalidInputError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _chunks(total: int, n: int, chunk_elements: int) -> list[int]:
    per = max(1, min(total, chunk_elements // max(n, 1)))
    sizes = [per] * (total // per)
    if total % per:
        sizes.append(total % per)
    return sizes


def _draw_indices(rng: np.random.Generator, c: int, n: int) -> np.ndarray:
    """(c, n) resample indices. Drawn as intp: numpy draws bounds below 2^32 with the same 32-bit
    stream for int32 and int64, so the values do not depend on the dtype, and an intp index
    gathers without the int32 -> intp conversion numpy would otherwise make on every gather."""
    return rng.integers(0, n, size=(c, n), dtype=np.intp)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(c, n) resample indices -> (c, n) float64 counts: how often each unit is drawn per resample.

    One bincount over row-offset indices (row i's index j lands in bin i * n + j); `idx` is
    overwritten with those offsets, so gather from it first.
    """
    c = idx.shape[0]
    idx += (np.arange(c, dtype=np.intp) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)


CountStatistic = Callable[[np.ndarray], np.ndarray]  # f(counts (c, n)) -> (c,)


def _bootstrap_distributions(
    xs: list[np.ndarray], stat: Callable[[np.ndarray], np.ndarray], statistic: Statistic,
    count_stats: list[CountStatistic], n: int, n_resamples: int, seed: int, chunk_elements: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bootstrap distributions of several length-n samples and count statistics over ONE
    resample-index matrix, drawn chunk by chunk from `default_rng(seed)` exactly as for a single
    sample (so each draw equals the one a separate call with the same seed makes).

    For the mean, each chunk's index matrix becomes a counts matrix (`_counts`) and every sample's
    resampled means are one matrix product counts @ X / n with X = (n, k): one bincount and one
    BLAS call instead of k gathers. Other statistics gather x[idx] per sample. Count statistics
    get the same counts matrix.
    """
    rng = np.random.default_rng(seed)
    by_counts = statistic == "mean" and bool(xs)
    stacked = np.stack(xs, axis=1) if by_counts else None  # (n, k)
    dists = np.empty((n_resamples, len(xs)), dtype=np.float64)
    count_dists = [np.empty(n_resamples, dtype=np.float64) for _ in count_stats]
    done = 0
    for c in _chunks(n_resamples, n, chunk_elements):  # chunks of resamples, each one vectorised call
        idx = _draw_indices(rng, c, n)  # (c, n), shared by every sample
        if not by_counts:
            for j, x in enumerate(xs):
                dists[done : done + c, j] = stat(x[idx])
        if by_counts or count_stats:
            counts = _counts(idx, n)
            if stacked is not None:
                dists[done : done + c] = (counts @ stacked) / n
            for f, out in zip(count_stats, count_dists):
                out[done : done + c] = f(counts)
        done += c
    return [np.ascontiguousarray(dists[:, j]) for j in range(len(xs))], count_dists


def _jackknife(x: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], statistic: Statistic, chunk_elements: int) -> np.ndarray:
    n = x.shape[0]
    if statistic == "mean":
        return (x.sum() - x) / (n - 1)
    out = np.empty(n, dtype=np.float64)
    cols = np.arange(n - 1)
    done = 0
    for c in _chunks(n, n - 1, chunk_elements):
        left_out = np.arange(done, done + c)[:, None]  # (c, 1)
        out[done : done + c] = stat(x[cols[None, :] + (cols[None, :] >= left_out)])  # (c, n-1) without row i
        done += c
    return out


def bootstrap_ci(values: object, statistic: Statistic = "mean", *, settings: BootstrapSettings = DEFAULT_BOOTSTRAP) -> Interval:
    """Bootstrap confidence interval of a statistic over independent units (queries).

    Args:
        values: (n,) one value per query; NaN entries are dropped.
        statistic: "mean", "median", or a callable f(x, axis) reducing the last axis.
        settings: resamples, confidence, seed, chunk size and method: "percentile" (quantiles
            of the bootstrap distribution, linear interpolation as `np.quantile`) or "bca"
            (bias-corrected and accelerated, jackknife acceleration).

    Returns:
        Interval. A sample whose values are all equal gives a zero-width interval at that value.

    Raises:
        InvalidInputError: bad shape, infinite values, bad options.
        EvaluationError: no finite values at all.
    """
    return bootstrap_cis([values], statistic, settings=settings, names=["values"])[0]


def bootstrap_cis(
    values: Sequence[object],
    statistic: Statistic = "mean",
    *,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
    names: Sequence[str] | None = None,
    count_statistics: Sequence[tuple[int, CountStatistic]] = (),
) -> list[Interval]:
    """`bootstrap_ci` of several per-query vectors, sharing one resample-index matrix.

    Vectors with the same number of finite values (after dropping NaN) are resampled with the
    same (n_resamples, n) index matrix, drawn once chunk by chunk; so the k-th Interval uses the
    resamples of `bootstrap_ci(values[k], ...)` with the same seed, and equals it up to the BLAS
    summation order of the means (relative 1e-12; exactly for "median" and callables), while the
    random draws and the counting are paid once per distinct length instead of once per vector.

    Args:
        values: a sequence of (n_k,) vectors, one value per query each; NaN entries are dropped.
        statistic, settings: as for `bootstrap_ci`.
        names: a name per vector for error messages (default "values[k]").
        count_statistics: (n, f) pairs, each a statistic of n units' resample counts as for
            `count_bootstrap_ci(n, f, ...)`; it gets the counts of the resamples the vectors of
            finite length n use (drawn once for both).

    Returns:
        one Interval per vector, in order, then one per count statistic, in order (each equal to
        `count_bootstrap_ci(n, f, ...)` with the same seed).

    Raises:
        InvalidInputError: bad shape, infinite values, bad options (naming the vector).
        EvaluationError: a vector with no finite values at all.
    """
    n_resamples, confidence, seed, method = settings.n_resamples, settings.confidence, settings.seed, settings.method
    chunk_elements = settings.chunk_elements
    _check_common(n_resamples, confidence)
    if method not in ("percentile", "bca"):
        raise InvalidInputError(f"unknown method {method!r}; use 'percentile' or 'bca'")
    labels = list(names) if names is not None else [f"values[{k}]" for k in range(len(values))]
    if len(labels) != len(values):
        raise InvalidInputError(f"names has {len(labels)} entries for {len(values)} vectors; give one name per vector")
    xs = [_clean(label, v) for label, v in zip(labels, values)]
    stat = _statistic(statistic)
    results: list[Interval | None] = [None] * len(xs)
    by_length: dict[int, list[int]] = {}
    for k, x in enumerate(xs):
        if np.all(x == x[0]):
            # Every resample is the same multiset: the bootstrap distribution is a point mass.
            estimate = float(x[0]) if statistic in ("mean", "median") else float(stat(x))  # x[0] is exact
            results[k] = Interval(estimate, estimate, estimate, confidence, n_resamples, method, x.shape[0])
        else:
            by_length.setdefault(x.shape[0], []).append(k)
    counted: dict[int, list[int]] = {}
    for j, (n, _) in enumerate(count_statistics):
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidInputError(f"count_statistics[{j}]: n must be a positive integer (units to resample), got {n!r}")
        counted.setdefault(int(n), []).append(j)
    count_results: list[Interval | None] = [None] * len(count_statistics)
    for n in dict.fromkeys([*by_length, *counted]):
        members, stats_j = by_length.get(n, []), counted.get(n, [])
        fs = [_checked(count_statistics[j][1]) for j in stats_j]
        dists, count_dists = _bootstrap_distributions(
            [xs[k] for k in members], stat, statistic, fs, n, n_resamples, seed, chunk_elements
        )
        for k, dist in zip(members, dists):
            results[k] = _interval(xs[k], dist, stat, statistic, confidence, n_resamples, method, chunk_elements)
        for j, f, dist in zip(stats_j, fs, count_dists):
            count_results[j] = _count_interval(n, f, dist, confidence, n_resamples, method, chunk_elements)
    return [r for r in (*results, *count_results) if r is not None]


def _interval(
    x: np.ndarray, dist: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], statistic: Statistic,
    confidence: float, n_resamples: int, method: Method, chunk_elements: int,
) -> Interval:
    """The percentile or BCa interval from a sample and its bootstrap distribution."""
    estimate = float(stat(x))
    low, high = _bounds(
        dist, estimate, lambda: _jackknife(x, stat, statistic, chunk_elements), confidence, n_resamples, method
    )
    return Interval(estimate, low, high, confidence, n_resamples, method, x.shape[0])


def _bounds(
    dist: np.ndarray, estimate: float, jackknife: Callable[[], np.ndarray], confidence: float, n_resamples: int,
    method: Method,
) -> tuple[float, float]:
    """Percentile or BCa bounds from a bootstrap distribution; `jackknife` gives the leave-one-out
    statistics (called for BCa only)."""
    alpha = (1.0 - confidence) / 2.0
    probs = np.array([alpha, 1.0 - alpha])
    if method == "bca":
        # Bias correction from the share of resamples below the estimate; clamp so that a
        # one-sided bootstrap distribution gives a finite (extreme-quantile) interval.
        below = np.count_nonzero(dist < estimate) / n_resamples
        below = min(max(below, 0.5 / n_resamples), 1.0 - 0.5 / n_resamples)
        z0 = special.ndtri(below)
        jack = jackknife()
        d = jack.mean() - jack
        denom = 6.0 * float(np.sum(d**2)) ** 1.5
        accel = float(np.sum(d**3)) / denom if denom > 0 else 0.0
        z = special.ndtri(probs)
        probs = special.ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    low, high = np.quantile(dist, probs)
    return float(low), float(high)


def count_bootstrap_ci(
    n: int,
    statistic: CountStatistic,
    *,
    settings: BootstrapSettings = DEFAULT_BOOTSTRAP,
) -> Interval:
    """Bootstrap CI of a statistic written as a function of how often each of n units is drawn.

    For statistics built from per-unit sums (a cluster bootstrap's Pearson over whole queries, a
    weighted mean) the resample's counts are all that matters: `statistic(counts)` takes a (c, n)
    float64 matrix of counts (each row sums to n) and returns (c,) values, typically with one matrix
    product. The resamples are the ones `bootstrap_ci` draws for n values with the same seed.

    Args:
        n: number of units (queries) resampled.
        statistic: f(counts (c, n)) -> (c,); f(ones((1, n))) is the point estimate, and for BCa the
            jackknife rows are ones with a single zero.
        settings: as for `bootstrap_ci`.

    Raises:
        InvalidInputError: bad options, n < 1, or a statistic that does not return (c,) values.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"n must be a positive integer (units to resample), got {n!r}")
    return bootstrap_cis([], "mean", settings=settings, count_statistics=[(n, statistic)])[0]


def _checked(statistic: CountStatistic) -> CountStatistic:
    """The count statistic, checking that it reduces each row of counts to one value."""

    def evaluate(counts: np.ndarray) -> np.ndarray:
        out = np.asarray(statistic(counts), dtype=np.float64)
        if out.shape != (counts.shape[0],):
            raise InvalidInputError(
                f"the count statistic returned shape {out.shape} for {counts.shape[0]} resample(s); "
                "it must reduce each row of the (c, n) counts matrix to one value"
            )
        return out

    return evaluate


def _count_interval(
    n: int, f: CountStatistic, dist: np.ndarray, confidence: float, n_resamples: int, method: Method,
    chunk_elements: int,
) -> Interval:
    """The interval of a count statistic: estimate f(all ones); jackknife rows leave one unit out."""
    estimate = float(f(np.ones((1, n)))[0])

    def jackknife() -> np.ndarray:
        out = np.empty(n, dtype=np.float64)
        start = 0
        for c in _chunks(n, n, chunk_elements):
            counts = np.ones((c, n))
            counts[np.arange(c), start + np.arange(c)] = 0.0  # row i leaves unit start + i out
            out[start : start + c] = f(counts)
            start += c
        return out

    low, high = _bounds(dist, estimate, jackknife, confidence, n_resamples, method)
    return Interval(estimate, low, high, confidence, n_resamples, method, n)


def _paired_diff(a: object, b: object) -> np.ndarray:
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != xb.shape:
        raise InvalidInputError(
            f"a {xa.shape} and b {xb.shape} must be one-dimensional and the same length (one value per query, same order)"
        )
    return xa - xb  # NaN in either -> NaN, dropped downstream


def paired_bootstrap_ci(a: object, b: object, *, settings: BootstrapSettings = DEFAULT_BOOTSTRAP) -> Interval:
    """CI of mean(a - b) with queries resampled in pairs.

    Resampling pairs (a_i, b_i) and averaging a - b is the same as resampling the differences,
    which is what is done. Pairs with NaN on either side are dropped.
    """
    return bootstrap_ci(_paired_diff(a, b), "mean", settings=settings)


def randomization_test(
    diff: object, n_resamples: int = 10_000, seed: int = 0, *, chunk_elements: int = CHUNK_ELEMENTS
) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(diff) == 0.

    Under the null each paired difference is as likely to have either sign. T = mean(diff);
    each resample flips every sign with probability 1/2; p = (1 + #{|T*| >= |T|}) / (1 + B),
    which lies in (0, 1]. NaN differences are dropped.
    """
    _check_common(n_resamples, 0.5)
    d = _clean("diff", diff)
    n = d.shape[0]
    total = float(d.sum())
    t_obs = abs(total)
    # |T*| and |T| come from different summation orders; forgive rounding so that a resample
    # equal to the observed one (all signs kept, or all flipped) counts as "at least as extreme".
    tol = 1e-9 * float(np.abs(d).sum())
    bits = np.random.default_rng(seed).bit_generator
    words = -(-n // 64)  # 64-bit words of random signs per resample
    n_bytes = words * 8
    # Each random byte keeps the signs of 8 consecutive diffs (bit 7 - j keeps diff 8g + j, the
    # order np.unpackbits uses). A table of every byte's kept sum per group, (n_bytes, 256), turns
    # a resample's kept sum into n_bytes lookups instead of an (n,) dot product; the padding
    # beyond n is 0, so its bits keep nothing.
    padded = np.zeros(n_bytes * 8)
    padded[:n] = d
    byte_bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)  # (256, 8)
    table = (padded.reshape(n_bytes, 8) @ byte_bits.T).ravel()  # [g * 256 + v]: kept sum of group g under byte v
    offsets = np.arange(n_bytes, dtype=np.intp) * 256
    extreme = 0
    for c in _chunks(n_resamples, n, chunk_elements):
        # Whole raw words per resample, so the signs do not depend on the chunk size.
        raw = bits.random_raw(c * words).astype("<u8").view(np.uint8).reshape(c, n_bytes)
        kept = table[raw + offsets].sum(axis=1)  # (c,): sum of the diffs whose sign is kept
        t_star = 2.0 * kept - total  # sum of sign-flipped diffs, (c,)
        extreme += int(np.count_nonzero(np.abs(t_star) >= t_obs - tol))
    return (1.0 + extreme) / (1.0 + n_resamples)


def holm(pvalues: object) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    adjusted_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over p sorted ascending: monotone in p,
    never below the raw p-value, capped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise InvalidInputError(f"pvalues must be one-dimensional, got shape {p.shape}")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidInputError("pvalues must all lie in [0, 1] (no NaN); drop checks that could not be evaluated first")
    m = p.shape[0]
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted
    return out


def paired_effect_size(diff: object) -> float:
    """Paired effect size mean(diff) / sd(diff) (ddof=1), NaN values dropped.

    Returns NaN when there are fewer than two values or every difference is 0, and ±inf when the
    differences are a nonzero constant (sd = 0).
    """
    d = _clean("diff", diff)
    if d.shape[0] < 2:
        return float("nan")
    mean = float(d.mean())
    sd = 0.0 if np.all(d == d[0]) else float(d.std(ddof=1))
    if sd == 0.0:
        return float("nan") if mean == 0.0 else float(np.copysign(np.inf, mean))
    return mean / sd


# ----- experiment grids: runs (seeds) are the units, queries are nested in them ------------------


def _count_checks(k: int, n: int, name: str) -> None:
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (k, n)) or n < 1 or not 0 <= k <= n:
        raise InvalidInputError(f"{name}: need integers 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact (Clopper–Pearson) CI of a probability from k successes in n trials (e.g. the share of
    runs that escape the collapse). Never narrower than the nominal coverage needs; the bound is 0
    (1) when k = 0 (k = n). `method` is "clopper-pearson", `n_resamples` 0."""
    from scipy import stats as sps

    _count_checks(k, n, "binomial_ci")
    _check_common(1, confidence)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(k / n, low, high, confidence, 0, "clopper-pearson", n)


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value that two groups of runs share one success probability
    (a variant's escapes k_a of n_a against the baseline's k_b of n_b): scipy's 2x2 test."""
    from scipy import stats as sps

    _count_checks(k_a, n_a, "fisher_exact (a)")
    _count_checks(k_b, n_b, "fisher_exact (b)")
    return float(sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="two-sided").pvalue)


def _runs_by_queries(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be two-dimensional (runs x queries; NaN pads missing queries), got shape {arr.shape}")
    if np.any(np.isinf(arr)):
        raise InvalidInputError(f"{name} holds infinite values; fix them first")
    keep = ~np.all(np.isnan(arr), axis=1)
    if np.count_nonzero(keep) < 2:
        raise EvaluationError(f"{name}: {int(np.count_nonzero(keep))} run(s) with a finite value; seed-level statistics need >= 2")
    return arr[keep]


def hierarchical_bootstrap_ci(values: object, *, settings: BootstrapSettings = DEFAULT_BOOTSTRAP) -> Interval:
    """Percentile CI of the grand mean of a (runs x queries) matrix with both levels resampled:
    each resample draws runs (training seeds) with replacement, then, inside every drawn run,
    that run's queries with replacement. The estimate is the mean over runs of each run's
    query mean, so seed-to-seed spread widens the interval (a single escaping seed cannot make a
    tight CI). NaN entries (excluded queries, ragged runs) are skipped within their run; a run
    that is all NaN is dropped. For paired comparisons pass the (run, query) differences.
    `n` is the number of runs used. `settings.method` must be "percentile" (the only one here).
    """
    n_resamples, confidence, seed, chunk_elements = settings.n_resamples, settings.confidence, settings.seed, settings.chunk_elements
    _check_common(n_resamples, confidence)
    if settings.method != "percentile":
        raise InvalidInputError(f"the hierarchical bootstrap is percentile only; got method {settings.method!r}")
    x = _runs_by_queries("values", values)
    s = x.shape[0]
    rows = [r[~np.isnan(r)] for r in x]
    q = max(r.shape[0] for r in rows)
    padded = np.zeros((s, q))
    sizes = np.array([r.shape[0] for r in rows], dtype=np.intp)
    for i, r in enumerate(rows):
        padded[i, : r.shape[0]] = r
    estimate = float(np.mean([r.mean() for r in rows]))
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    done = 0
    for c in _chunks(n_resamples, s * q, max(1, chunk_elements // 4)):  # four (c, s, q) arrays live at once
        runs = rng.integers(0, s, size=(c, s), dtype=np.intp)  # (c, s) drawn runs
        u = rng.random((c, s, q))
        qidx = np.minimum((u * sizes[runs][..., None]).astype(np.intp), sizes[runs][..., None] - 1)  # within each run's size
        cols = np.arange(q)[None, None, :] < sizes[runs][..., None]  # only a run's own number of draws counts
        vals = padded[runs[..., None], qidx]
        run_means = np.where(cols, vals, 0.0).sum(axis=2) / sizes[runs]
        out[done : done + c] = run_means.mean(axis=1)
        done += c
    alpha = 1.0 - confidence
    low, high = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high), confidence, n_resamples, "hierarchical-percentile", s)


# Sign flips of `seed_level_test` when it cannot enumerate them (more than 16 runs): p is at least
# 1/(1 + B), and Holm multiplies the smallest p by the number of tests (15 variants in the
# collapse protocol), so B must leave room below the research plan's stretch target (p < 0.001):
# with 10,000 the floor was 0.0015 whatever the data; with 10^6 it is 1.5e-5.
SEED_TEST_RESAMPLES = 1_000_000


def seed_level_test(diff: object, n_resamples: int = SEED_TEST_RESAMPLES, seed: int = 0) -> float:
    """Two-sided paired sign-flip test on per-run (per-seed) differences, e.g. a variant's test
    NDCG@10 minus the baseline's with the same training and generator seed: the run, not the
    query, is the unit. Exact (all 2^n sign patterns) for n <= 16, else `randomization_test`
    with `n_resamples`. p = #{|sum*| >= |sum|} / #patterns; 10 seeds cannot give p below
    2/1024 ≈ 0.002. NaN differences are dropped."""
    d = _clean("diff", diff)
    n = d.shape[0]
    if n > 16:
        return randomization_test(d, n_resamples=n_resamples, seed=seed)
    total = abs(float(d.sum()))
    tol = 1e-9 * float(np.abs(d).sum())
    patterns = ((np.arange(1 << n, dtype=np.int64)[:, None] >> np.arange(n)) & 1).astype(np.float64)  # (2^n, n)
    sums = (2.0 * patterns - 1.0) @ d
    return float(np.count_nonzero(np.abs(sums) >= total - tol)) / float(1 << n)
