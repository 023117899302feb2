"""Paired bootstrap CI: fusionguard.stats vs scipy.stats.bootstrap on the same data.

10,000 queries x 10,000 resamples of per-query NDCG differences, percentile and BCa methods,
both vectorised and paired. Each side is timed best-of-`--repeats`; scipy gets the same
resample batch size that fusionguard's chunking uses, so neither materialises the full
10,000 x 10,000 index matrix. The intervals differ only by Monte Carlo noise (different random
streams), which is why "same to 3 decimals" is checked on rounded bounds and |difference| is
reported next to it.

Run:  nice .venv/bin/python -m benchmarks.bootstrap
Writes benchmarks/results/bootstrap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from benchmarks._common import best_time  # noqa: E402
import scipy  # noqa: E402
from scipy import stats as sps  # noqa: E402

from fusionguard.stats import CHUNK_ELEMENTS, BootstrapSettings, paired_bootstrap_ci  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bootstrap.json"


def make_data(n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query NDCG@10 of a candidate and a baseline: bounded, skewed, correlated, many ties at 0/1."""
    rng = np.random.default_rng(seed)
    base = np.clip(rng.beta(2.0, 1.5, n_queries) + rng.normal(0, 0.05, n_queries), 0, 1)
    cand = np.clip(base + rng.normal(0.01, 0.12, n_queries), 0, 1)
    return cand, base


def run(n_queries: int, n_resamples: int, repeats: int, seed: int) -> dict:
    a, b = make_data(n_queries, seed)
    batch = max(1, CHUNK_ELEMENTS // n_queries)  # resamples per vectorised chunk, both sides

    def mean_diff(x, y, axis=-1):
        return np.mean(x - y, axis=axis)

    rows = []
    for method, scipy_method in (("percentile", "percentile"), ("bca", "BCa")):
        t_ours, ours = best_time(
            lambda m=method: paired_bootstrap_ci(a, b, settings=BootstrapSettings(n_resamples=n_resamples, seed=seed, method=m)), repeats
        )
        t_scipy, res = best_time(
            lambda m=scipy_method: sps.bootstrap(
                (a, b), mean_diff, n_resamples=n_resamples, method=m, paired=True, vectorized=True,
                batch=batch, confidence_level=0.95, rng=np.random.default_rng(seed + 1),
            ),
            repeats,
        )
        ref = res.confidence_interval
        diff = max(abs(ours.low - ref.low), abs(ours.high - ref.high))
        rows.append(
            {
                "method": method,
                "fusionguard_s": t_ours,
                "scipy_s": t_scipy,
                "speedup": t_scipy / t_ours,
                "fusionguard_ci": [ours.low, ours.high],
                "scipy_ci": [float(ref.low), float(ref.high)],
                "estimate": ours.estimate,
                "max_abs_bound_diff": diff,
                "same_to_3_decimals": bool(
                    round(ours.low, 3) == round(float(ref.low), 3) and round(ours.high, 3) == round(float(ref.high), 3)
                ),
            }
        )
    return {
        "n_queries": n_queries,
        "n_resamples": n_resamples,
        "repeats": repeats,
        "batch_resamples": batch,
        "seed": seed,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
    }


def print_table(result: dict) -> None:
    print(
        f"paired bootstrap of mean NDCG difference: {result['n_queries']:,} queries x "
        f"{result['n_resamples']:,} resamples, best of {result['repeats']}, batch {result['batch_resamples']} resamples"
    )
    head = f"{'method':<11}{'fusionguard s':>14}{'scipy s':>10}{'scipy/fg':>10}  {'fusionguard CI':<20}{'scipy CI':<20}{'max |Δ|':>10}  3 dp"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        fg = f"[{r['fusionguard_ci'][0]:.4f}, {r['fusionguard_ci'][1]:.4f}]"
        sc = f"[{r['scipy_ci'][0]:.4f}, {r['scipy_ci'][1]:.4f}]"
        print(
            f"{r['method']:<11}{r['fusionguard_s']:>14.3f}{r['scipy_s']:>10.3f}{r['speedup']:>9.2f}x  {fg:<20}{sc:<20}"
            f"{r['max_abs_bound_diff']:>10.1e}  {'yes' if r['same_to_3_decimals'] else 'no'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.queries, args.resamples, args.repeats, args.seed)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
