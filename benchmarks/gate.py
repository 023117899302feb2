"""The whole release gate vs the bare ONNX Runtime floor.

2,000 queries x 50 candidates (100,000 rows) of the toy benchmark; the candidate is the toy fusion
model (8-head attention output), the baseline the text-only toy V1; default policy (5 seeded
permutations per ablation, 10,000 bootstrap resamples). The gate scores the candidate under
every mask it needs (full, 5 visual + 5 text permutations, 3 Shapley passes = 14 passes) and the
baseline once.

The floor is bare ONNX Runtime doing the same forward passes: the same number of rows per model
through `InferenceSession.run` in batches of the same size, with the inputs already in memory
(no masking, no dataset reading, no metrics, no statistics, no reports). Both are measured in one
run, side by side, with the same thread settings.

Run:  nice .venv/bin/python -m benchmarks.gate [--queries 2000 --candidates 50]
Writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fusionguard import toymodels as tm  # noqa: E402
from fusionguard.dataset import write_dataset  # noqa: E402
from gate.measures import plan_passes  # noqa: E402
from gate.policy import Policy  # noqa: E402
from gate.runner import run_gate  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    policy = Policy()
    with tempfile.TemporaryDirectory(prefix="fg-bench-gate-") as tmp:
        root = Path(tmp)
        batch = tm.make_toy_dataset(n_queries=args.queries, n_candidates=args.candidates, seed=args.seed)
        data = write_dataset(root / "eval.parquet", batch.query_id, batch.item_id, batch.label, batch.feeds)
        candidate = tm.save(tm.build_fusion_model(1.0), root / "candidate.onnx")
        baseline = tm.save(tm.build_text_model(), root / "v1.onnx")
        # Warm the lazy imports (Great Expectations, matplotlib) on a tiny run so that neither
        # side pays one-time import costs inside its timing.
        tiny = tm.make_toy_dataset(n_queries=25, n_candidates=5)
        tiny_data = write_dataset(root / "tiny.parquet", tiny.query_id, tiny.item_id, tiny.label, tiny.feeds)
        run_gate(candidate, tiny_data, root / "warm", baseline=baseline, policy=policy)

        t0 = time.perf_counter()
        result = run_gate(candidate, data, root / "report", baseline=baseline, policy=policy)
        gate_s = time.perf_counter() - t0

        passes = len(plan_passes(policy).masks)
        n = len(batch)
        floor_cand = floor_seconds(candidate, batch.feeds, passes, policy.scoring.batch_rows)
        floor_base = floor_seconds(baseline, {k: batch.feeds[k] for k in ("query", "text_tokens")}, 1, policy.scoring.batch_rows)
    floor_s = floor_cand + floor_base
    t = result.timings
    record = {
        "queries": args.queries,
        "candidates": args.candidates,
        "rows": n,
        "candidate_passes": passes,
        "forward_rows": (passes + 1) * n,
        "outcome": result.outcome,
        "gate_seconds": round(gate_s, 3),
        "floor_seconds": round(floor_s, 3),
        "ratio_gate_to_floor": round(gate_s / floor_s, 2),
        "scoring_seconds": round(t.get("scoring", float("nan")), 3),
        "ratio_scoring_to_floor": round(t.get("scoring", float("nan")) / floor_s, 2),
        "stages_seconds": {k: round(v, 3) for k, v in t.items()},
        "target": "gate < 60 s and gate/floor < 2",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    print(f"{'measure':<34}{'seconds':>10}{'x floor':>10}")
    print(f"{'bare ONNX Runtime (floor)':<34}{floor_s:>10.2f}{1.0:>10.2f}")
    print(f"{'gate: scoring stage':<34}{t.get('scoring', float('nan')):>10.2f}{record['ratio_scoring_to_floor']:>10.2f}")
    print(f"{'gate: whole command':<34}{gate_s:>10.2f}{record['ratio_gate_to_floor']:>10.2f}")
    for stage, seconds in t.items():
        print(f"  {stage:<32}{seconds:>10.2f}")
    print(f"{n} rows x {passes + 1} passes; outcome {result.outcome}; target: < 60 s and < 2x floor")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
