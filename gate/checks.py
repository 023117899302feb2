"""The release checks: each turns measurements and the policy into an outcome with its numbers.

Outcomes: ``passed``, ``failed`` (the candidate is blocked, exit 1), ``error`` (the check could
not be evaluated: exit 3, or exit 2 when the input was invalid) and ``skipped`` (the policy
decided not to run it, with the reason). Decision rules (docs/gate.md):

- visual ablation fails when the upper CI bound of the mean relative visual drop is below
  ``ablation.min_visual_drop``: the data must leave no doubt that the drop is too small;
- integrity fails when the upper CI bound of mean per-query Spearman *or* of global Pearson is at
  or above ``integrity.max_correlation`` (fail-closed: the candidate must show that it differs);
- quality fails when the lower CI bound of mean(NDCG candidate - NDCG baseline) is below
  ``-quality.margin`` (non-inferiority, decided on the CI, not on the point estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionguard import metrics, stats
from fusionguard.errors import EXIT_BLOCKED, EXIT_INVALID, EXIT_PASSED, FusionGuardError

from fusionguard.gate.measures import (
    ModelMeasures,
    head_means,
    interval,
    intervals,
    paired_interval,
    pearson_interval,
    pearson_statistic,
    per_query_mean,
)
from fusionguard.gate.outcomes import ERROR, FAILED, PASSED, SKIPPED, VERDICT_TITLE, GateOutcome, Outcome  # noqa: F401 - re-exported
from fusionguard.gate.policy import Policy

CHECK_NAMES = ("data", "contract", "visual_ablation", "integrity", "quality", "attention")


@dataclass
class CheckResult:
    """One check's outcome and the numbers behind it."""

    name: str
    outcome: str  # passed | failed | error | skipped
    summary: str  # one line a reviewer reads first
    numbers: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # why it failed / errored / was skipped
    exit_code: int = EXIT_PASSED  # 0 passed/skipped, 1 failed, 2 invalid input, 3 not evaluable

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "summary": self.summary,
            "numbers": clean(self.numbers),
            "thresholds": clean(self.thresholds),
            "reasons": list(self.reasons),
            "exit_code": self.exit_code,
        }


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, Intervals -> dicts."""
    if isinstance(value, stats.Interval):
        return clean(
            {
                "estimate": value.estimate, "low": value.low, "high": value.high, "confidence": value.confidence,
                "n_resamples": value.n_resamples, "method": value.method, "n": value.n,
            }
        )
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def fmt(iv: stats.Interval, digits: int = 3) -> str:
    """'0.123 [0.100, 0.150]' (a rounding-level negative shows as 0.000, not -0.000)."""
    e, lo, hi = (round(x, digits) + 0.0 for x in (iv.estimate, iv.low, iv.high))
    return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name, SKIPPED, f"skipped: {reason}", reasons=[reason])


def errored(name: str, reason: str, exit_code: int) -> CheckResult:
    prefix = "invalid input" if exit_code == EXIT_INVALID else "could not be evaluated"
    return CheckResult(name, ERROR, f"{prefix}: {reason.splitlines()[0]}", reasons=[reason], exit_code=exit_code)


def _verdict(name: str, failures: list[str], summary: str, numbers: dict, thresholds: dict) -> CheckResult:
    if failures:
        return CheckResult(name, FAILED, summary, numbers, thresholds, failures, EXIT_BLOCKED)
    return CheckResult(name, PASSED, summary, numbers, thresholds)


Intervals = Mapping[str, stats.Interval]  # precomputed bootstrap CIs by name (see `shared_intervals`)
PEARSON_RESAMPLED = "pearson"  # `shared_intervals` key: the bootstrap of `pearson_statistic` (its estimate set by the check)


def _ci(cis: Intervals | None, name: str, values: np.ndarray, policy: Policy) -> stats.Interval:
    """The precomputed CI `name` when given, else a bootstrap of `values` (the same numbers either way)."""
    if cis is not None and name in cis:
        return cis[name]
    return interval(values, policy)


def attention_vectors(m: ModelMeasures, groups: metrics.QueryGroups) -> dict[str, np.ndarray]:
    """(Q,) per-query visual attention mass and entropy (head means); empty without attention."""
    if m.attention is not None:  # reduced while streaming
        return {"visual_mass": m.attention.mass_per_query, "entropy": m.attention.entropy_per_query}
    if m.attention_mass is None or m.attention_entropy is None:
        return {}
    return {
        "visual_mass": per_query_mean(groups, m.attention_mass.mean(axis=1)),
        "entropy": per_query_mean(groups, m.attention_entropy.mean(axis=1)),
    }


def shared_intervals(
    m: ModelMeasures,
    groups: metrics.QueryGroups,
    policy: Policy,
    baseline_scores: np.ndarray | None = None,
    baseline_ndcg: np.ndarray | None = None,
) -> dict[str, stats.Interval]:
    """Every bootstrap CI of a mean the checks report, in one `stats.bootstrap_cis` call.

    The vectors share one resample-index matrix per length, so the gate pays for the random draws
    once instead of once per interval; each CI equals the one its check would compute alone.
    Returns an empty dict when any vector cannot be bootstrapped (e.g. all NaN): each check then
    computes its own and the error lands on the check it belongs to.
    """
    try:
        vectors = {"visual_drop": m.visual_drop, "text_drop": m.text_drop, "visual_share": m.visual_share_per_query}
        if baseline_scores is not None:
            vectors["spearman_mean"] = metrics.spearman_per_query(groups, m.scores, baseline_scores)
        if baseline_ndcg is not None:
            vectors["ndcg_candidate"] = m.ndcg
            vectors["ndcg_baseline"] = baseline_ndcg
            vectors["difference"] = np.asarray(m.ndcg, dtype=np.float64) - np.asarray(baseline_ndcg, dtype=np.float64)
        vectors.update(attention_vectors(m, groups))
        counted = {}
        if baseline_scores is not None:  # Pearson's cluster bootstrap rides on the same query resamples
            counted[PEARSON_RESAMPLED] = (groups.n_queries, pearson_statistic(groups, m.scores, baseline_scores))
        return intervals(vectors, policy, counted)
    except FusionGuardError:
        return {}


def visual_ablation_check(m: ModelMeasures, policy: Policy, cis: Intervals | None = None) -> CheckResult:
    """Masking the visual inputs must cost enough NDCG; text drop and Shapley shares are reported.
    `cis`: CIs precomputed by `shared_intervals` (computed here when absent)."""
    a, sh = policy.ablation, policy.shapley
    visual = _ci(cis, "visual_drop", m.visual_drop, policy)
    text = _ci(cis, "text_drop", m.text_drop, policy)
    share = _ci(cis, "visual_share", m.visual_share_per_query, policy)
    numbers = {
        "visual_drop": visual,
        "text_drop": text,
        "visual_share": share,
        "ndcg_full": float(np.nanmean(m.ndcg)),
        "ndcg_visual_masked": float(np.nanmean(m.ndcg_visual_masked)),
        "ndcg_text_masked": float(np.nanmean(m.ndcg_text_masked)),
        "mean_abs_phi_text": float(np.mean(np.abs(m.phi_text))),
        "mean_abs_phi_visual": float(np.mean(np.abs(m.phi_visual))),
        "strategy": a.strategy,
        "n_permutations": a.n_permutations if a.strategy == "permute" else 1,
        "shapley_strategy": sh.strategy,
        "n_queries": visual.n,
    }
    thresholds = {"min_visual_drop": a.min_visual_drop, "min_text_drop": a.min_text_drop, "min_visual_share": sh.min_visual_share}
    failures = []
    if visual.high < a.min_visual_drop:
        failures.append(
            f"visual ablation drop {fmt(visual)}: even the upper {policy.bootstrap.confidence:.0%} bound is below the "
            f"minimum {a.min_visual_drop:g}; the model barely uses its visual input"
        )
    if a.min_text_drop is not None and text.high < a.min_text_drop:
        failures.append(f"text ablation drop {fmt(text)}: upper bound below the minimum {a.min_text_drop:g}")
    if sh.min_visual_share is not None and share.high < sh.min_visual_share:
        failures.append(f"visual Shapley share {fmt(share)}: upper bound below the minimum {sh.min_visual_share:g}")
    summary = f"visual drop {fmt(visual)} (min {a.min_visual_drop:g}), text drop {fmt(text)}, visual share {fmt(share)}"
    return _verdict("visual_ablation", failures, summary, numbers, thresholds)


def integrity_check(
    m: ModelMeasures,
    baseline_scores: np.ndarray,
    groups: metrics.QueryGroups,
    policy: Policy,
    cis: Intervals | None = None,
) -> CheckResult:
    """The candidate must not be the baseline in disguise (a monotone function of its scores)."""
    limit = policy.integrity.max_correlation
    per_query = metrics.spearman_per_query(groups, m.scores, baseline_scores)
    spearman = _ci(cis, "spearman_mean", per_query, policy)
    pearson = pearson_interval(groups, m.scores, baseline_scores, policy, resampled=(cis or {}).get(PEARSON_RESAMPLED))
    numbers = {
        "spearman_mean": spearman,
        "pearson": pearson,
        "n_queries_constant": int(np.count_nonzero(np.isnan(per_query))),
        "share_queries_spearman_ge_limit": float(np.nanmean(per_query >= limit)) if spearman.n else None,
    }
    failures = []
    if spearman.high >= limit:
        failures.append(
            f"mean per-query Spearman vs the baseline is {fmt(spearman)}: the upper bound reaches the maximum "
            f"{limit:g}; the candidate ranks like the baseline"
        )
    if pearson.high >= limit:
        failures.append(f"Pearson vs the baseline is {fmt(pearson)}: the upper bound reaches the maximum {limit:g}")
    summary = f"Spearman {fmt(spearman)}, Pearson {fmt(pearson)} (max {limit:g})"
    return _verdict("integrity", failures, summary, numbers, {"max_correlation": limit})


def quality_check(
    m: ModelMeasures, baseline_ndcg: np.ndarray, policy: Policy, cis: Intervals | None = None
) -> CheckResult:
    """NDCG@k must not be worse than the baseline's by more than the margin (CI-based)."""
    margin = policy.quality.margin
    diff = m.ndcg - baseline_ndcg
    ci = cis["difference"] if cis is not None and "difference" in cis else paired_interval(m.ndcg, baseline_ndcg, policy)
    p = stats.randomization_test(diff, policy.bootstrap.n_resamples, policy.seed)
    effect = stats.paired_effect_size(diff)
    k = policy.metric.k
    numbers = {
        f"ndcg@{k}_candidate": _ci(cis, "ndcg_candidate", m.ndcg, policy),
        f"ndcg@{k}_baseline": _ci(cis, "ndcg_baseline", baseline_ndcg, policy),
        "difference": ci,
        "p_value": p,
        "effect_size": effect,
        "n_queries": ci.n,
    }
    failures = []
    if ci.low < -margin:
        failures.append(
            f"NDCG@{k} difference {fmt(ci, 4)}: the lower bound is below -{margin:g}, so the candidate may be worse "
            f"than the baseline by more than the non-inferiority margin (p = {p:.3g})"
        )
    summary = f"NDCG@{k} difference {fmt(ci, 4)} (margin {margin:g}), p = {p:.3g}, effect size {effect:.2f}"
    return _verdict("quality", failures, summary, numbers, {"margin": margin})


def attention_check(
    m: ModelMeasures, groups: metrics.QueryGroups, policy: Policy, has_output: bool, cis: Intervals | None = None
) -> CheckResult:
    """Visual attention mass and normalised entropy per head; thresholds optional."""
    if m.attention is None and (m.attention_mass is None or m.attention_entropy is None):
        reason = "the model exports no attention output" if not has_output else "the contract gives no visual key range"
        return skipped("attention", reason)
    ap = policy.attention
    if cis is not None and "visual_mass" in cis and "entropy" in cis:
        mass, entropy = cis["visual_mass"], cis["entropy"]
    else:
        vectors = attention_vectors(m, groups)
        mass, entropy = interval(vectors["visual_mass"], policy), interval(vectors["entropy"], policy)
    if m.attention is not None:
        mass_heads = [float(v) for v in m.attention.mass_per_head]
        entropy_heads = [float(v) for v in m.attention.entropy_per_head]
    else:
        mass_heads = head_means(m.attention_mass) or []
        entropy_heads = head_means(m.attention_entropy) or []
    numbers = {
        "visual_mass": mass,
        "entropy": entropy,
        "visual_mass_per_head": mass_heads,
        "entropy_per_head": entropy_heads,
        "n_heads": len(mass_heads),
    }
    thresholds = {"min_visual_mass": ap.min_visual_mass, "min_entropy": ap.min_entropy, "max_entropy": ap.max_entropy}
    failures = []
    if ap.min_visual_mass is not None and mass.high < ap.min_visual_mass:
        failures.append(f"visual attention mass {fmt(mass)}: upper bound below the minimum {ap.min_visual_mass:g}")
    for h, e in enumerate(entropy_heads):
        if ap.min_entropy is not None and e < ap.min_entropy:
            failures.append(f"head {h}: normalised entropy {e:.3f} below the minimum {ap.min_entropy:g} (attention collapsed)")
        if ap.max_entropy is not None and e > ap.max_entropy:
            failures.append(f"head {h}: normalised entropy {e:.3f} above the maximum {ap.max_entropy:g} (attention uniform)")
    summary = f"visual attention mass {fmt(mass)}, entropy {fmt(entropy)} over {len(mass_heads)} heads"
    if not any(v is not None for v in thresholds.values()):
        summary += " (reported; no thresholds set)"
    return _verdict("attention", failures, summary, numbers, thresholds)
