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
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fusionguard.metrics import spearman_per_query
from fusionguard.training.checkpoint import load_checkpoint
from fusionguard.training.config import VARIANTS, TrainConfig, read_toml, with_variant
from fusionguard.training.variants import REGISTRY
from fusionguard.training.data import load_split, read_dims
from fusionguard.training.diagnostics import score_split
from fusionguard.training.synth import SynthConfig, write_benchmark
from fusionguard.training.trainer import train

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


def recipe_config(recipe: dict | None = None) -> TrainConfig:
    """training/configs/default.toml with `recipe` ({section: {key: value}}) merged over it."""
    data = read_toml(CONFIG)
    for key, value in (recipe or {}).items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(data, source=f"{CONFIG} + --recipe")


def _train_one(task: tuple[str, int, str, str, dict]) -> dict:
    """Train one (variant, seed) run; top-level so a process pool can call it."""
    variant, seed, data, work, recipe = task
    import torch

    torch.set_num_threads(1)
    config = replace(with_variant(recipe_config(recipe), variant), seed=seed)
    out = Path(work) / f"{variant}-s{seed}"
    t0 = time.perf_counter()
    result = train(config, data, out, progress=False, resume=False)
    print(f"trained {variant} seed {seed}: {result.summary()}", flush=True)  # partial results survive a timeout
    return {"variant": variant, "seed": seed, **result.test, "seconds": time.perf_counter() - t0,
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "examples_per_s": result.examples_per_s,
            "diagnostics_share": result.diagnostics_share, "out": str(out)}


def run(seeds: list[int], variants: list[str], work: Path, jobs: int = 1, synth: SynthConfig | None = None,
        recipe: dict | None = None) -> dict:
    data = work / "bench"
    synth_result = write_benchmark(synth or SynthConfig(), data)
    print(synth_result.summary(), flush=True)
    order = ["v1"] + [v for v in variants if v != "v1"]  # V1 is always trained: Spearman needs its scores
    tasks = [(variant, seed, str(data), str(work), recipe or {}) for seed in seeds for variant in order]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(_train_one, tasks))
    else:
        runs = [_train_one(task) for task in tasks]
    dims = read_dims(data)
    test_full = load_split(data / "test.parquet", dims, with_visual=True)
    test_text = load_split(data / "test.parquet", dims, with_visual=False)
    scores = {}
    for row in runs:
        model = load_checkpoint(row["out"]).model
        scores[(row["variant"], row["seed"])] = score_split(model, test_full if model.has_visual else test_text).full
    for row in runs:
        rho = spearman_per_query(test_full.groups, scores[(row["variant"], row["seed"])], scores[("v1", row["seed"])])
        row["spearman_v1"] = float(np.nanmean(rho))
        drop = row["visual_drop"]
        print(f"{row['variant']:17s} seed {row['seed']}: NDCG@10 {row['ndcg']:.4f}  visual drop "
              f"{'n/a' if drop is None else f'{100 * drop:.2f}%'}  spearman(V1) {row['spearman_v1']:.4f}  "
              f"{row['seconds']:.0f} s ({row['epochs']} epochs)  {row['examples_per_s']:.0f} ex/s  "
              f"diagnostics {100 * row['diagnostics_share']:.0f}%", flush=True)
    table = []
    base_ndcg = _ms([r["ndcg"] for r in runs if r["variant"] == "baseline"])[0]
    for variant in order:
        rows = [r for r in runs if r["variant"] == variant]
        stats = {m: _ms([r[m] for r in rows]) for m in (*METRICS, "seconds", "examples_per_s", "diagnostics_share")}
        drop = stats["visual_drop"][0]
        table.append({
            "variant": variant, **{f"{m}_mean": s[0] for m, s in stats.items()}, **{f"{m}_sd": s[1] for m, s in stats.items()},
            "meets_drop_target": None if drop is None else drop >= 0.10,
            "ndcg_not_worse_than_baseline": None if base_ndcg is None else stats["ndcg"][0] >= base_ndcg,
        })
    return {"synth": synth_result.oracle_ndcg10, "synth_config": asdict(synth or SynthConfig()), "seeds": seeds,
            "recipe": recipe_config(recipe).to_dict(),
            "jobs": jobs, "host": platform.node(), "torch": __import__("torch").__version__, "runs": runs, "table": table,
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
    parser.add_argument("--variants", nargs="+", default=list(REGISTRY), choices=VARIANTS)  # every variant once; aliases accepted
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusionguard-bench-training"))
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained in parallel processes (1 thread each).")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where to write the JSON results.")
    parser.add_argument("--synth", type=json.loads, default={}, help="JSON object of SynthConfig fields to override.")
    parser.add_argument("--recipe", type=json.loads, default={}, help='JSON overrides of default.toml, e.g. {"optim": {"lr": 0.001}}.')
    parser.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/training.md.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = run(args.seeds, args.variants, args.work, jobs=args.jobs, synth=SynthConfig(**args.synth), recipe=args.recipe)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = markdown(report)
    print(table)
    if not args.no_doc and DOC.is_file():
        text = DOC.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            DOC.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    main()
