"""Every variant x 3 seeds on the default synthetic benchmark: the training results table.

Run: .venv/bin/python -m benchmarks.training [--seeds 0 1 2] [--variants baseline mbl ...] [--work DIR]

Writes benchmarks/results/training.json and the table between the RESULTS markers in
docs/training.md. Columns (mean ± sd over seeds, test split, best-val checkpoint): NDCG@10,
visual ablation drop, visual attention mass, Spearman with V1 (per query, averaged), plus time
per run, throughput and the diagnostics' share of epoch time. The plan's targets are checked
per row: visual ablation drop >= 10% and NDCG@10 not below the baseline's mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fusionguard.metrics import spearman_per_query
from training.checkpoint import load_checkpoint
from training.config import VARIANTS, load_config, with_variant
from training.data import load_split, read_dims
from training.diagnostics import score_split
from training.synth import SynthConfig, write_benchmark
from training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "training.json"
DOC = ROOT / "docs" / "training.md"
CONFIG = ROOT / "training" / "configs" / "default.toml"
BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
METRICS = ("ndcg", "visual_drop", "visual_attention_mass", "spearman_v1")


def _ms(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(mean: float | None, sd: float | None, pct: bool = False) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f}% ± {100 * sd:.2f}" if pct else f"{mean:.4f} ± {sd:.4f}"


def run(seeds: list[int], variants: list[str], work: Path) -> dict:
    data = work / "bench"
    synth = write_benchmark(SynthConfig(), data)
    print(synth.summary(), flush=True)
    dims = read_dims(data)
    test_full = load_split(data / "test.parquet", dims, with_visual=True)
    base_config = load_config(CONFIG)
    runs: list[dict] = []
    v1_scores: dict[int, np.ndarray] = {}
    order = ["v1"] + [v for v in variants if v != "v1"]  # V1 first: Spearman needs its scores
    for seed in seeds:
        for variant in order:
            config = replace(with_variant(base_config, variant), seed=seed)
            out = work / f"{variant}-s{seed}"
            t0 = time.perf_counter()
            result = train(config, data, out, progress=False, resume=False)
            seconds = time.perf_counter() - t0
            model = load_checkpoint(out).model
            scores = score_split(model, test_full if model.has_visual else load_split(data / "test.parquet", dims, False)).full
            if variant == "v1":
                v1_scores[seed] = scores
            rho = float(np.nanmean(spearman_per_query(test_full.groups, scores, v1_scores[seed])))
            row = {"variant": variant, "seed": seed, **result.test, "spearman_v1": rho, "seconds": seconds,
                   "epochs": result.epochs_run, "best_epoch": result.best_epoch, "examples_per_s": result.examples_per_s,
                   "diagnostics_share": result.diagnostics_share}
            runs.append(row)
            print(f"{variant:17s} seed {seed}: NDCG@10 {row['ndcg']:.4f}  visual drop {row['visual_drop'] if row['visual_drop'] is None else round(row['visual_drop'], 4)}"
                  f"  spearman(V1) {rho:.4f}  {seconds:.0f} s  {result.examples_per_s:.0f} ex/s  diag {100 * result.diagnostics_share:.0f}%", flush=True)
    table = []
    base_ndcg = _ms([r["ndcg"] for r in runs if r["variant"] == "baseline"])[0]
    for variant in order:
        rows = [r for r in runs if r["variant"] == variant]
        if not rows:
            continue
        stats = {m: _ms([r[m] for r in rows]) for m in (*METRICS, "seconds", "examples_per_s", "diagnostics_share")}
        drop = stats["visual_drop"][0]
        table.append({
            "variant": variant, **{f"{m}_mean": s[0] for m, s in stats.items()}, **{f"{m}_sd": s[1] for m, s in stats.items()},
            "meets_drop_target": None if drop is None else drop >= 0.10,
            "ndcg_not_worse_than_baseline": None if base_ndcg is None else stats["ndcg"][0] >= base_ndcg,
        })
    return {"synth": synth.oracle_ndcg10, "seeds": seeds, "runs": runs, "table": table,
            "baseline_collapsed": next((t["visual_drop_mean"] < 0.01 for t in table if t["variant"] == "baseline"), None)}


def markdown(report: dict) -> str:
    o = report["synth"]
    lines = [
        f"Default benchmark, seeds {report['seeds']}, mean ± sd. Oracle NDCG@10 on test: with visual "
        f"{o['with_visual']:.4f}, text only {o['text_only']:.4f}. Baseline collapsed (visual drop < 1%): "
        f"**{report['baseline_collapsed']}**. Targets: visual ablation drop ≥ 10% and NDCG@10 ≥ the baseline's.",
        "",
        "| variant | test NDCG@10 | visual ablation drop | visual attention mass | Spearman with V1 | drop ≥ 10% | NDCG ≥ baseline | s/run | examples/s | diagnostics share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    yn = lambda x: "n/a" if x is None else ("yes" if x else "**no**")  # noqa: E731
    for t in report["table"]:
        lines.append(
            f"| {t['variant']} | {_fmt(t['ndcg_mean'], t['ndcg_sd'])} | {_fmt(t['visual_drop_mean'], t['visual_drop_sd'], True)} | "
            f"{_fmt(t['visual_attention_mass_mean'], t['visual_attention_mass_sd'])} | {_fmt(t['spearman_v1_mean'], t['spearman_v1_sd'])} | "
            f"{yn(t['meets_drop_target'])} | {yn(t['ndcg_not_worse_than_baseline'])} | {t['seconds_mean']:.0f} | "
            f"{t['examples_per_s_mean']:.0f} | {100 * t['diagnostics_share_mean']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusionguard-bench-training"))
    parser.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/training.md.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = run(args.seeds, args.variants, args.work)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = markdown(report)
    print(table)
    if not args.no_doc and DOC.is_file():
        text = DOC.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            DOC.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    main()
