"""Scorer: one stacked session.run for several masks vs one session.run per mask.

The monitor computes exact two-modality Shapley values per request, which needs four passes
(full, visual masked, text masked, both masked). `Scorer.run` stacks the four masked copies on the
batch axis and calls ONNX Runtime once; the alternative is four calls. This benchmark times both
on the toy fusion model for a few request sizes, best of `--repeats`, CPU provider, one
intra-op thread, and checks that both give the same scores. It also reports the dataset scoring
throughput of `Scorer.score_dataset` (rows per second, all four masks).

Run:  nice .venv/bin/python -m benchmarks.scorer
Writes benchmarks/results/scorer.json.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from benchmarks._common import best_time, write_results  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fusionguard import toymodels  # noqa: E402
from fusionguard.masking import shapley_passes  # noqa: E402
from fusionguard.scorer import Scorer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scorer.json"
SHAPLEY_MASKS = list(shapley_passes("zero").masks)  # the gate's and the monitor's four passes


def run(sizes: list[int], dim: int, n_tokens: int, heads: int, repeats: int, dataset_rows: int) -> dict:
    model = toymodels.build_fusion_model(1.0, dim=dim, n_text=n_tokens, n_visual=n_tokens, n_heads=heads)
    scorer = Scorer(model, device="cpu", threads=1)
    rows = []
    for n in sizes:
        data = toymodels.make_toy_dataset(max(1, n // 8), 8, dim=dim, n_text=n_tokens, n_visual=n_tokens, seed=n)
        feeds = {k: v[:n] for k, v in data.feeds.items()}
        scorer.run(feeds, SHAPLEY_MASKS)  # warm-up
        t_stacked, stacked = best_time(lambda f=feeds: scorer.run(f, SHAPLEY_MASKS), repeats)
        t_separate, separate = best_time(lambda f=feeds: [scorer.run(f, [m])[0] for m in SHAPLEY_MASKS], repeats)
        diff = max(float(np.max(np.abs(a.score - b.score))) for a, b in zip(stacked, separate))
        rows.append(
            {
                "rows": n,
                "masks": len(SHAPLEY_MASKS),
                "stacked_s": t_stacked,
                "separate_s": t_separate,
                "separate_over_stacked": t_separate / t_stacked,
                "max_abs_score_diff": diff,
            }
        )
    data = toymodels.make_toy_dataset(dataset_rows // 8, 8, dim=dim, n_text=n_tokens, n_visual=n_tokens, seed=1)
    t_dataset, _ = best_time(lambda: scorer.score_dataset(data, SHAPLEY_MASKS, batch_rows=4096), max(1, repeats // 2))
    return {
        "model": {"dim": dim, "n_text": n_tokens, "n_visual": n_tokens, "heads": heads},
        "provider": scorer.provider,
        "threads": 1,
        "repeats": repeats,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "dataset": {"rows": len(data), "masks": len(SHAPLEY_MASKS), "seconds": t_dataset, "rows_per_s": len(data) / t_dataset},
    }


def print_table(result: dict) -> None:
    m = result["model"]
    print(
        f"toy fusion model D={m['dim']} Lt=Lv={m['n_text']} H={m['heads']}, {result['provider']}, 1 thread, "
        f"best of {result['repeats']}; 4 Shapley masks"
    )
    head = f"{'rows':>6}{'stacked ms':>12}{'separate ms':>13}{'separate/stacked':>18}{'max |Δscore|':>14}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(
            f"{r['rows']:>6}{r['stacked_s'] * 1e3:>12.3f}{r['separate_s'] * 1e3:>13.3f}"
            f"{r['separate_over_stacked']:>17.2f}x{r['max_abs_score_diff']:>14.1e}"
        )
    d = result["dataset"]
    print(f"score_dataset: {d['rows']:,} rows x {d['masks']} masks in {d['seconds']:.3f} s = {d['rows_per_s']:,.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 512, 4096])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dataset-rows", type=int, default=20_000)
    args = parser.parse_args()
    result = run(args.sizes, args.dim, args.tokens, args.heads, args.repeats, args.dataset_rows)
    print_table(result)
    write_results(RESULTS, result)


if __name__ == "__main__":
    main()
