"""The whole release gate vs the bare ONNX Runtime floor.

2,000 queries x 50 candidates (100,000 rows); default policy (5 seeded permutations per ablation,
10,000 bootstrap resamples). The gate scores the candidate under every mask it needs (full,
5 visual + 5 text permutations, 3 Shapley passes = 14 passes) and the baseline once. Two rows:

- **toy**: the toy fusion model (8-head attention output) at the toy sizes (D=16, 4 text + 4
  visual tokens) and the text-only toy V1: the issue's headline number.
- **V2-sized inputs**: the same toy models built at the trained V2 exports' input sizes (the
  synthetic benchmark's defaults, D=32 with 8 text + 8 visual tokens; training/synth.py). The toy
  graph is still one attention read-out, not a d_model=64 two-layer transformer, so its forward
  pass is cheaper than a trained V2's: the floor here is a lower bound of a real model's.
- **exported V2 baseline** (with `--exported`, needs the `train` extra): the real product
  architectures, `fusionguard train` for one epoch on a small synthetic training split and
  `fusionguard export` (the 8-head cross-attention V2 baseline as candidate, V1 as baseline), gated
  on a 2,000-query synthetic test split. One epoch is enough: the forward cost does not depend on
  the weights, and this row measures speed, not the verdict.

The floor is bare ONNX Runtime doing the same forward passes: the same number of rows per model
through `InferenceSession.run` in batches of the same size, with the inputs already in memory
(no masking, no dataset reading, no metrics, no statistics, no reports). Gate and floor are
measured in one run, side by side, with the same thread settings.

Run:  nice .venv/bin/python -m benchmarks.gate [--queries 2000 --candidates 50]
Writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from benchmarks._common import write_results  # noqa: E402
from fusionguard import toymodels as tm  # noqa: E402
from fusionguard.dataset import write_dataset  # noqa: E402
from fusionguard.gate.measures import plan_passes  # noqa: E402
from fusionguard.gate.policy import Policy  # noqa: E402
from fusionguard.gate.runner import run_gate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gate.json"


def floor_seconds(model: Path, feeds: dict[str, np.ndarray], passes: int, batch_rows: int) -> float:
    """Bare InferenceSession.run over passes x N rows in batches of `batch_rows`."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    n = next(iter(feeds.values())).shape[0]
    total = passes * n
    # One pre-built batch of batch_rows rows (tiled from the data) reused: the floor does no copying.
    reps = -(-batch_rows // n)
    block = {k: np.concatenate([feeds[k]] * reps)[:batch_rows] for k in names}
    t0 = time.perf_counter()
    done = 0
    while done < total:
        rows = min(batch_rows, total - done)
        session.run(None, {k: v[:rows] for k, v in block.items()})
        done += rows
    return time.perf_counter() - t0


SIZES = {  # row name -> (D, text tokens, visual tokens)
    "toy": (tm.DIM, tm.N_TEXT, tm.N_VISUAL),
    "V2-sized inputs": (32, 8, 8),
}


def toy_setup(sizes: tuple[int, int, int], queries: int, candidates: int, seed: int, root: Path):
    """Toy candidate, toy V1, the eval set and a tiny warm-up set for one model size."""
    dim, n_text, n_visual = sizes
    batch = tm.make_toy_dataset(n_queries=queries, n_candidates=candidates, dim=dim, n_text=n_text,
                                n_visual=n_visual, seed=seed)
    data = write_dataset(root / "eval.parquet", batch.query_id, batch.item_id, batch.label, batch.feeds)
    candidate = tm.save(tm.build_fusion_model(1.0, dim=dim, n_text=n_text, n_visual=n_visual), root / "candidate.onnx")
    baseline = tm.save(tm.build_text_model(dim=dim, n_text=n_text), root / "v1.onnx")
    tiny = tm.make_toy_dataset(n_queries=25, n_candidates=5, dim=dim, n_text=n_text, n_visual=n_visual)
    tiny_data = write_dataset(root / "tiny.parquet", tiny.query_id, tiny.item_id, tiny.label, tiny.feeds)
    return candidate, baseline, data, batch, tiny_data


def exported_setup(queries: int, candidates: int, seed: int, root: Path):
    """The real V2 baseline and V1 architectures, trained one epoch and exported (needs torch)."""
    from fusionguard.recipes.exporting import export_checkpoint
    from fusionguard.contract import load_contract
    from fusionguard.dataset import load_dataset
    from fusionguard.training.config import OptimConfig, TrainConfig
    from fusionguard.training.synth import SynthConfig, write_benchmark
    from fusionguard.training.trainer import train

    bench = root / "bench"
    write_benchmark(SynthConfig(seed=seed, n_train=16, n_val=8, n_test=queries, n_candidates=candidates), bench)
    models = {}
    for variant in ("baseline", "v1"):
        config = TrainConfig(variant=variant, seed=seed, device="cpu", optim=OptimConfig(max_epochs=1))
        train(config, bench, root / variant, progress=False)
        models[variant] = export_checkpoint(root / variant, root / f"{variant}.onnx").path
    data = bench / "test.parquet"
    batch = load_dataset(data, load_contract(models["baseline"]))
    tiny = root / "tiny.parquet"
    write_dataset(tiny, batch.query_id[:250], batch.item_id[:250], batch.label[:250],
                  {k: v[:250] for k, v in batch.feeds.items()})
    return models["baseline"], models["v1"], data, batch, tiny


def measure(name: str, setup, policy: Policy) -> dict:
    """Time the whole gate and its floor for one (candidate, baseline, data) setup."""
    candidate, baseline, data, batch, tiny_data = setup
    # Warm the lazy imports (Great Expectations, matplotlib) and the sessions' first run on a
    # tiny run so that neither side pays one-time costs inside its timing.
    run_gate(candidate, tiny_data, Path(tiny_data).parent / f"warm-{name.replace(' ', '_')}", baseline=baseline, policy=policy)

    t0 = time.perf_counter()
    result = run_gate(candidate, data, Path(tiny_data).parent / f"report-{name.replace(' ', '_')}", baseline=baseline, policy=policy)
    gate_s = time.perf_counter() - t0

    passes = len(plan_passes(policy).masks)
    floor_cand = floor_seconds(candidate, batch.feeds, passes, policy.scoring.batch_rows)
    floor_base = floor_seconds(baseline, {k: batch.feeds[k] for k in ("query", "text_tokens")}, 1, policy.scoring.batch_rows)
    floor_s = floor_cand + floor_base
    t = result.timings
    return {
        "row": name,
        "dim": int(batch.feeds["query"].shape[1]),
        "text_tokens": int(batch.feeds["text_tokens"].shape[1]),
        "visual_tokens": int(batch.feeds["visual_tokens"].shape[1]),
        "queries": int(len(np.unique(batch.query_id))),
        "candidates": int(len(batch) // len(np.unique(batch.query_id))),
        "rows": len(batch),
        "candidate_passes": passes,
        "forward_rows": (passes + 1) * len(batch),
        "outcome": result.outcome,
        "gate_seconds": round(gate_s, 3),
        "floor_seconds": round(floor_s, 3),
        "ratio_gate_to_floor": round(gate_s / floor_s, 2),
        "scoring_seconds": round(t.get("scoring", float("nan")), 3),
        "ratio_scoring_to_floor": round(t.get("scoring", float("nan")) / floor_s, 2),
        "stages_seconds": {k: round(v, 3) for k, v in t.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exported", action="store_true",
                        help="add a row with the real V2 baseline and V1 architectures exported to ONNX (needs torch)")
    args = parser.parse_args()

    policy = Policy()
    with tempfile.TemporaryDirectory(prefix="fg-bench-gate-") as tmp:
        rows = []
        for i, (name, sizes) in enumerate(SIZES.items()):
            root = Path(tmp) / f"row{i}"
            root.mkdir()
            rows.append(measure(name, toy_setup(sizes, args.queries, args.candidates, args.seed, root), policy))
        if args.exported:
            root = Path(tmp) / "exported"
            root.mkdir()
            rows.append(measure("exported V2 baseline", exported_setup(args.queries, args.candidates, args.seed, root), policy))
    names = [r["row"] for r in rows]
    width = 18
    print(f"{'seconds (x floor)':<30}" + "".join(f"{n:>{width}}" for n in names))

    def line(label: str, key: str, ratio: str | None = None) -> None:
        cells = [f"{r[key]:.2f}" + (f" ({r[ratio]:.2f}x)" if ratio else "") for r in rows]
        print(f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells))

    line("bare ONNX Runtime (floor)", "floor_seconds")
    line("gate: scoring stage", "scoring_seconds", "ratio_scoring_to_floor")
    line("gate: whole command", "gate_seconds", "ratio_gate_to_floor")
    for stage in rows[0]["stages_seconds"]:
        print(f"  {stage:<28}" + "".join(f"{r['stages_seconds'].get(stage, float('nan')):>{width}.2f}" for r in rows))
    print(f"{rows[0]['rows']} rows x {rows[0]['candidate_passes'] + 1} passes; outcomes "
          f"{', '.join(r['outcome'] for r in rows)}; target: < 60 s and < 2x floor")
    head = rows[-1]  # the exported product architecture when measured, else the V2-sized toy row
    record = {
        **{k: head[k] for k in ("queries", "candidates", "rows", "candidate_passes", "forward_rows", "outcome",
                                "gate_seconds", "floor_seconds", "ratio_gate_to_floor", "scoring_seconds",
                                "ratio_scoring_to_floor", "stages_seconds")},
        "target": "gate < 60 s and gate/floor < 2 (issue 5); headline = the last row measured",
        "rows_measured": rows,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    write_results(RESULTS, record)


if __name__ == "__main__":
    main()
