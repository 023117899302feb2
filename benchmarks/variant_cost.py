"""Cost of one training run per variant: default config, default synthetic benchmark, seed 0.

Run: OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -m benchmarks.variant_cost [--variants agm pmr ...]

One run each, one after another, so the seconds are what one run costs on this machine under
whatever else is running (the numbers say nothing about how well a variant works: early stopping
ends most runs after 5 epochs, and one seed is no result). Writes
benchmarks/results/training_variant_cost.json: per variant the wall seconds of the run, epochs
run, seconds per epoch, training examples per second and the diagnostics' share of epoch time,
plus the ratio of seconds per epoch to the baseline's in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from fusionguard.training.config import load_config
from fusionguard.training.synth import SynthConfig, write_benchmark
from fusionguard.training.trainer import train
from fusionguard.training.variants import VARIANTS

RESULTS = Path(__file__).resolve().parent / "results" / "training_variant_cost.json"
CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "default.toml"
NEW = ["ogm-ge", "adversarial", "separate-softmax", "agm", "pmr", "mmpareto", "opm", "unimodal-heads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=NEW, choices=VARIANTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusionguard-variant-cost"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    bench = args.work / "bench"
    if not (bench / "test.parquet").is_file():
        write_benchmark(SynthConfig(seed=0), bench)
    rows = []
    for variant in ["baseline", *[v for v in args.variants if v != "baseline"]]:
        config = load_config(CONFIG, variant=variant, device="cpu")
        t0 = time.perf_counter()
        result = train(config, bench, args.work / "runs" / variant, progress=False, resume=False)
        seconds = time.perf_counter() - t0
        rows.append({"variant": variant, "seconds": round(seconds, 1), "epochs": result.epochs_run,
                     "s_per_epoch": round(seconds / max(result.epochs_run, 1), 2), "examples_per_s": round(result.examples_per_s),
                     "diagnostics_share": round(result.diagnostics_share, 3)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["s_per_epoch"]
    for row in rows:
        row["s_per_epoch_vs_baseline"] = round(row["s_per_epoch"] / base, 2)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "config": "training/configs/default.toml", "benchmark": "SynthConfig(seed=0)", "seed": 0}
    args.results.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
