"""Windowed drift of live per-request values against the gate's reference profile.

The unit is the request: for each tracked feature (the visual share, the visual attention mass
and the L2 norm of each input) a telemetry-sampled request contributes ONE value, the mean over
its candidates (`fusionguard.profile.request_means`), and the profile summarises the same
per-query values of the eval set. The rows of a request are not independent (its query vector is
repeated on every row), so statistics over rows treat ~50 copies of one value as 50 observations
and fire on normal traffic (issue 16); statistics over requests do not. The monitor keeps the
last `window` requests' values and, once the window is full, compares them with the profile:

- **PSI** (population stability index) of the window's histogram over the profile's quantile
  edges against the profile's counts: `sum((q - p) * ln(q / p))`, bin shares floored at
  `PSI_FLOOR` so empty bins stay finite. The alert threshold `PSI_MAJOR` and the window size
  come from the false-alarm and detection numbers of `benchmarks/drift.py` (docs/runbooks.md).
- **two-sample Kolmogorov-Smirnov test** of the window against the profile's sample; the
  p-value is exported for dashboards (no alert: one p-value per feature per evaluation would
  fire on ~1% of in-distribution windows per feature by construction). The p-value is
  Kolmogorov's asymptotic distribution at `sqrt(n m / (n + m)) * D` (numpy only, so the serving
  install needs no scipy). Against scipy's exact two-sample p-value it is slightly conservative:
  measured 0.3-8 % larger for a 100-2000 value window against a 2000 value sample.

Nothing is reported before the window holds `min_requests` values: a half-empty window has a
larger null spread of PSI than the thresholds were calibrated for.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusionguard.profile import ReferenceProfile, Summary

PSI_FLOOR = 1e-4  # smallest bin share used in PSI, keeps ln(q/p) finite for empty bins
PSI_MODERATE = 0.1  # dashboard band (docs/monitor.md)
PSI_MAJOR = 0.25  # the FusionGuardModalityDrift threshold (deploy/prometheus rules, benchmarks/drift.py)
KS_ALPHA = 0.01  # dashboard band for the KS p-value
DEFAULT_WINDOW = 200  # requests per drift window (benchmarks/drift.py measures false alarms at this size)
_KS_TERMS = np.arange(1, 101, dtype=np.float64)  # series terms of the Kolmogorov distribution


def psi(values: np.ndarray, edges: np.ndarray, counts: np.ndarray) -> float:
    """PSI of `values` against a reference histogram (`counts` over strictly increasing `edges`).

    Values below the first edge fall in the first bin and above the last in the last, as the
    profile's documentation asks.
    """
    edges = np.asarray(edges, dtype=np.float64)
    ref = np.asarray(counts, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0 or ref.sum() <= 0:
        return float("nan")
    # Interior edges decide the bin; values on an interior edge go right, like np.histogram.
    idx = np.searchsorted(edges[1:-1], vals, side="right")
    live = np.bincount(idx, minlength=ref.size).astype(np.float64)
    p = np.maximum(ref / ref.sum(), PSI_FLOOR)
    q = np.maximum(live / live.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's limiting distribution (scipy.stats.kstwobign.sf).

    Two series of the same function: `2 sum (-1)^(k-1) exp(-2 k^2 x^2)` converges fast for x >= 1,
    `1 - sqrt(2 pi) / x * sum exp(-(2k-1)^2 pi^2 / (8 x^2))` for x < 1.
    """
    if not np.isfinite(x):
        return float("nan")
    if x <= 0.0:
        return 1.0
    k = _KS_TERMS
    if x < 1.0:
        cdf = np.sqrt(2.0 * np.pi) / x * np.sum(np.exp(-((2.0 * k - 1.0) ** 2) * np.pi**2 / (8.0 * x * x)))
        return float(min(1.0, max(0.0, 1.0 - cdf)))
    sf = 2.0 * np.sum((-1.0) ** (k - 1.0) * np.exp(-2.0 * k * k * x * x))
    return float(min(1.0, max(0.0, sf)))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value.

    D is the largest gap between the two empirical CDFs (scipy.stats.ks_2samp's statistic); the
    p-value is `kolmogorov_sf(sqrt(n m / (n + m)) * D)`. NaN for an empty sample.
    """
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    both = np.concatenate([a, b])
    gap = np.searchsorted(a, both, side="right") / a.size - np.searchsorted(b, both, side="right") / b.size
    d = float(np.max(np.abs(gap)))
    en = a.size * b.size / (a.size + b.size)
    return d, kolmogorov_sf(np.sqrt(en) * d)


@dataclass(frozen=True)
class DriftResult:
    feature: str
    n: int  # requests in the window with a finite value of the feature
    psi: float
    pvalue: float


class _Window:
    def __init__(self, summary: Summary, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.edges = np.asarray(summary.edges, dtype=np.float64)
        self.counts = np.asarray(summary.counts, dtype=np.float64)
        self.sample = np.asarray(summary.sample, dtype=np.float64)


class DriftTracker:
    """The last `window` requests' values per feature and their drift against a reference profile.

    Thread-safe: `add` is called from the telemetry worker, `results` from anywhere.
    """

    def __init__(self, profile: ReferenceProfile, window: int = DEFAULT_WINDOW, min_requests: int | None = None) -> None:
        self.profile = profile
        self.window = window
        self.min_requests = window if min_requests is None else min_requests
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {"visual_share": _Window(profile.visual_share, window)}
        if profile.attention_mass is not None:
            self._windows["attention_mass"] = _Window(profile.attention_mass, window)
        for name, summary in profile.features.items():
            self._windows[name] = _Window(summary, window)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._windows)

    def add(self, values: Mapping[str, float]) -> None:
        """Append one request's values (feature -> its per-request value, `request_means`).

        Unknown features and non-finite values are ignored.
        """
        with self._lock:
            for name, value in values.items():
                w = self._windows.get(name)
                v = float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) if w is not None else float("nan")
                if w is not None and np.isfinite(v):
                    w.values.append(v)

    def results(self) -> list[DriftResult]:
        """PSI and KS p-value per feature whose window holds at least `min_requests` values."""
        with self._lock:
            snap = {name: (np.fromiter(w.values, dtype=np.float64), w) for name, w in self._windows.items()}
        out = []
        for name, (vals, w) in snap.items():
            if vals.size < self.min_requests:
                continue
            value = psi(vals, w.edges, w.counts)
            pvalue = ks_2samp(vals, w.sample)[1] if w.sample.size else float("nan")
            out.append(DriftResult(name, int(vals.size), value, pvalue))
        return out
