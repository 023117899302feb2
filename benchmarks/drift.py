"""Drift alert calibration: false alarms on in-distribution replay, detection of stated shifts.

The protocol was fixed before any number was looked at (issue 16); it is not tuned to them.

Model and eval set
  The honest toy fusion model (`toymodels.build_fusion_model(1.0)`: score = text part + visual
  part, attention over text and visual keys) on a structured eval set of 1,000 queries, 30-70
  candidates each (uniform), seed 1. Eight topics with random unit centres c_k in D = 16: a
  query of topic k is 0.8 c_k + 0.6 g / sqrt(D); its candidates' text tokens are N(0, I) +
  0.5 c_k; a candidate's visual tokens share one image embedding z ~ N(0, I) plus 0.5 N(0, I)
  token noise (real image tokens are correlated, noise is not). The reference profile is built
  the gate's way: `fusionguard.gate.measures.measure_model` with the default policy (zero-masked Shapley
  passes), then `fusionguard.profile.build_profile` with the query of each row.

Monitor side
  Each request is scored by the monitor's `ModelService.score` with telemetry and reduced by
  `fusionguard.monitor.telemetry.request_values` (one value per feature per request); the values enter the
  monitor's `DriftTracker` (window W = 200 requests, reported only when full) and PSI / KS are
  evaluated every 10 requests, as the telemetry worker publishes them. Telemetry sampling is a
  Bernoulli draw per request, so the sampled requests of random traffic are themselves random
  whole queries: a stream below is the sequence of sampled requests.

In-distribution replay
  20 streams x 3,000 requests, each request a whole query drawn uniformly with replacement from
  the eval set. Reported: the share of evaluation points (and of disjoint windows) over each
  threshold, per feature and for any feature: PSI > 0.25 (the alert), PSI > 0.1 (the dashboard's
  "moderate" band), KS p < 0.01 (dashboard only). Target: <= 1% over the alert threshold. For
  contrast, the row-level window of the code before issue 16 (2,000 rows, per-row profile) on the
  query norm feature. Added after the first run, as a stricter check and not used to set any
  threshold: the same replay with FRESH queries of the same topics (3,000 new queries, not in the
  eval set), which adds the reference's own sampling noise that real traffic meets.

Shifts (each: 40 streams; 200 in-distribution requests fill the window, then every request is
shifted; detected = an evaluation point with PSI > 0.25 on any feature within 2W = 400 shifted
requests; time to alert = shifted requests until that point)
  visual_noise    visual tokens replaced by iid normal noise with the eval set's element std
  visual_scale2   visual tokens x 2
  images_missing  each candidate's visual tokens zeroed with probability 0.5
  text_only_mix   30% of requests text-only (all visual tokens zero), the rest unchanged
  new_topic       queries of a ninth topic absent from the eval set, candidates' text tokens of
                  that topic (constructed like the eval topics)
Wall time to fire = sampled requests / (telemetry share x request rate) + the rule's `for:`.

Run:  nice .venv/bin/python -m benchmarks.drift        (about 1-2 minutes on 2 cores)
Writes benchmarks/results/drift.json.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from benchmarks._common import write_results  # noqa: E402
from fusionguard import metrics, toymodels  # noqa: E402
from fusionguard.dataset import Batch  # noqa: E402
from fusionguard.profile import Summary, build_profile, feature_summaries  # noqa: E402
from fusionguard.scorer import Scorer  # noqa: E402
from fusionguard.gate.measures import measure_model  # noqa: E402
from fusionguard.gate.policy import Policy  # noqa: E402
from fusionguard.monitor.drift import KS_ALPHA, PSI_MAJOR, PSI_MODERATE, DriftTracker, psi  # noqa: E402
from fusionguard.monitor.service import ModelService, ServiceConfig  # noqa: E402
from fusionguard.monitor.telemetry import request_values  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM, N_TEXT, N_VISUAL = toymodels.DIM, toymodels.N_TEXT, toymodels.N_VISUAL
N_TOPICS = 8
WINDOW = 200  # requests (fusionguard.monitor.drift.DEFAULT_WINDOW)
EVERY = 10  # requests between evaluations (TelemetryConfig.drift_every)
SHIFTS = ("visual_noise", "visual_scale2", "images_missing", "text_only_mix", "new_topic")
VISUAL_STD = math.sqrt(1.0 + 0.25)  # element std of the eval set's visual tokens (z + 0.5 noise)


# ----- the eval set and the shifts -----------------------------------------------------------------

def topic_centres(rng: np.random.Generator, n: int) -> np.ndarray:
    c = rng.standard_normal((n, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def make_query(rng: np.random.Generator, centre: np.ndarray, n_cand: int) -> dict[str, np.ndarray]:
    """One request: a topic's query repeated on every candidate row, its candidates' tokens."""
    q = 0.8 * centre + 0.6 * rng.standard_normal(DIM) / math.sqrt(DIM)
    text = rng.standard_normal((n_cand, N_TEXT, DIM)) + 0.5 * centre
    z = rng.standard_normal((n_cand, 1, DIM))
    visual = z + 0.5 * rng.standard_normal((n_cand, N_VISUAL, DIM))
    return {
        "query": np.repeat(q[None, :], n_cand, axis=0).astype(np.float32),
        "text_tokens": text.astype(np.float32),
        "visual_tokens": visual.astype(np.float32),
    }


def make_eval_set(
    seed: int, n_queries: int, centres: np.ndarray | None = None
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """(requests, 9 topic centres: 8 of the eval set + 1 held out for the new-topic shift).
    With `centres`, fresh queries of the same topics."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = topic_centres(rng, N_TOPICS + 1)
    requests = [
        make_query(rng, centres[rng.integers(N_TOPICS)], int(rng.integers(30, 71))) for _ in range(n_queries)
    ]
    return requests, centres


def shifted(name: str, feeds: dict[str, np.ndarray], rng: np.random.Generator, centres: np.ndarray) -> dict[str, np.ndarray]:
    out = dict(feeds)
    v = feeds["visual_tokens"]
    if name == "visual_noise":
        out["visual_tokens"] = (VISUAL_STD * rng.standard_normal(v.shape)).astype(np.float32)
    elif name == "visual_scale2":
        out["visual_tokens"] = v * np.float32(2.0)
    elif name == "images_missing":
        keep = rng.random(v.shape[0]) >= 0.5
        out["visual_tokens"] = v * keep[:, None, None].astype(np.float32)
    elif name == "text_only_mix":
        if rng.random() < 0.3:
            out["visual_tokens"] = np.zeros_like(v)
    elif name == "new_topic":
        out = make_query(rng, centres[N_TOPICS], v.shape[0])
    else:
        raise ValueError(name)
    return out


# ----- measuring -----------------------------------------------------------------------------------

def reference_profile(model: Path, requests: list[dict[str, np.ndarray]]):
    """The gate's profile of `model` on the eval set, plus the per-row query norms (old scheme)."""
    n = [len(r["query"]) for r in requests]
    qid = np.repeat(np.arange(len(requests)), n)
    feeds = {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}
    batch = Batch(qid, np.concatenate([np.arange(k) for k in n]), np.ones(qid.size, np.int64), feeds)
    groups = metrics.QueryGroups.from_arrays(batch.query_id, batch.item_id, batch.label)
    policy = Policy()
    m = measure_model(Scorer(model, device="cpu", threads=1), batch, groups, policy)
    norms = feature_summaries(feeds)
    profile = build_profile(
        "bench", m.visual_share, norms, m.attention_mass, requests=qid, shapley_strategy=policy.shapley.strategy
    )
    return profile, norms["query"]


def values_of(service: ModelService, requests: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
    return [request_values(service.score(r, telemetry=True)) for r in requests]


def run_stream(profile, values: list[dict[str, float]], evaluate_from: int) -> list[dict[str, tuple[float, float]]]:
    """Feed the values to a DriftTracker; every EVERY requests from `evaluate_from` on, the
    (PSI, KS p) per feature (empty until the window is full)."""
    tracker = DriftTracker(profile, window=WINDOW)
    out = []
    for i, v in enumerate(values, start=1):
        tracker.add(v)
        if i >= evaluate_from and i % EVERY == 0:
            out.append({r.feature: (r.psi, r.pvalue) for r in tracker.results()})
    return out


def null_shares(points: list[dict[str, tuple[float, float]]], features: tuple[str, ...]) -> dict:
    rows = {}
    for feature in (*features, "any"):
        def over(test) -> float:  # noqa: ANN001
            hits = [any(test(p[f]) for f in features) if feature == "any" else test(p[feature]) for p in points]
            return float(np.mean(hits))

        rows[feature] = {
            f"psi>{PSI_MAJOR}": over(lambda x: x[0] > PSI_MAJOR),
            f"psi>{PSI_MODERATE}": over(lambda x: x[0] > PSI_MODERATE),
            f"ks_p<{KS_ALPHA}": over(lambda x: x[1] < KS_ALPHA),
            "psi_p99": None if feature == "any" else float(np.quantile([p[feature][0] for p in points], 0.99)),
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--null-streams", type=int, default=20)
    ap.add_argument("--null-requests", type=int, default=3000)
    ap.add_argument("--shift-streams", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "drift.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed + 1000)
    requests, centres = make_eval_set(args.seed, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        model = toymodels.save(toymodels.build_fusion_model(1.0), Path(tmp) / "fusion.onnx")
        profile, row_query_norms = reference_profile(model, requests)
        service = ModelService(ServiceConfig(model=model, telemetry_share=1.0, device="cpu", threads=1))
        eval_values = values_of(service, requests)
        fresh_values = values_of(service, make_eval_set(args.seed + 500, 3000, centres)[0])
        shifted_values = {
            name: values_of(service, [shifted(name, r, rng, centres) for r in requests]) for name in SHIFTS
        }
    features = ("visual_share", "attention_mass", *sorted(profile.features))

    # In-distribution replay (and the fresh-query variant).
    def replay_null(pool: list[dict[str, float]]) -> tuple[list, list]:
        points, disjoint = [], []
        for _ in range(args.null_streams):
            idx = rng.integers(len(pool), size=args.null_requests)
            stream = run_stream(profile, [pool[i] for i in idx], WINDOW)
            points += stream
            disjoint += stream[:: WINDOW // EVERY]  # windows that share no request
        return points, disjoint

    points, disjoint = replay_null(eval_values)
    null = {"evaluation_points": len(points), "by_feature": null_shares(points, features)}
    null_disjoint = {"windows": len(disjoint), "by_feature": null_shares(disjoint, features)}
    fresh_points, _ = replay_null(fresh_values)
    fresh = {"evaluation_points": len(fresh_points), "by_feature": null_shares(fresh_points, features)}

    # The row-level window before issue 16, on the query norm: 2,000 rows of ~40 requests vs a
    # per-row profile.
    row_summary = Summary.of(row_query_norms)
    row_rows = []
    for _ in range(300):
        rows, total = [], 0
        while total < 2000:
            r = requests[rng.integers(len(requests))]
            rows.append(np.linalg.norm(r["query"].astype(np.float64), axis=1))
            total += len(r["query"])
        row_rows.append(psi(np.concatenate(rows)[-2000:], np.array(row_summary.edges), np.array(row_summary.counts)))
    rows_before = {"windows": 300, f"psi>{PSI_MAJOR}": float(np.mean(np.array(row_rows) > PSI_MAJOR)),
                   "psi_median": float(np.median(row_rows))}

    # Shifts.
    shifts = {}
    for name in SHIFTS:
        delays, firing = [], {f: 0 for f in features}
        for _ in range(args.shift_streams):
            before = [eval_values[i] for i in rng.integers(len(requests), size=WINDOW)]
            after = [shifted_values[name][i] for i in rng.integers(len(requests), size=2 * WINDOW)]
            stream = run_stream(profile, before + after, WINDOW + EVERY)
            delay = None
            for k, p in enumerate(stream):
                over = [f for f in features if f in p and p[f][0] > PSI_MAJOR]
                if over:
                    delay = (k + 1) * EVERY
                    for f in over:
                        firing[f] += 1
                    break
            delays.append(delay)
        hit = [d for d in delays if d is not None]
        shifts[name] = {
            "streams": args.shift_streams,
            "detection_rate": len(hit) / len(delays),
            "requests_to_alert_median": float(np.median(hit)) if hit else None,
            "requests_to_alert_p90": float(np.quantile(hit, 0.9)) if hit else None,
            "first_alert_features": {f: c for f, c in firing.items() if c},
        }

    result = {
        "protocol": {
            "model": "toymodels.build_fusion_model(1.0)", "eval_queries": args.queries, "candidates": "30-70",
            "window_requests": WINDOW, "evaluate_every_requests": EVERY, "alert_psi": PSI_MAJOR,
            "null_streams": args.null_streams, "null_requests_per_stream": args.null_requests,
            "shift_streams": args.shift_streams, "shift_horizon_requests": 2 * WINDOW, "seed": args.seed,
        },
        "in_distribution": null,
        "in_distribution_disjoint_windows": null_disjoint,
        "fresh_queries_same_topics": fresh,
        "row_level_window_before_issue_16": rows_before,
        "shifts": shifts,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"in-distribution replay: {len(points)} evaluation points ({len(disjoint)} disjoint windows of {WINDOW} requests)")
    print(f"{'feature':<16}{'PSI>0.25':>10}{'PSI>0.1':>10}{'KS p<.01':>10}{'PSI p99':>9}   disjoint PSI>0.25")
    for f, r in null["by_feature"].items():
        p99 = "" if r["psi_p99"] is None else f"{r['psi_p99']:.3f}"
        d = null_disjoint["by_feature"][f][f"psi>{PSI_MAJOR}"]
        print(f"{f:<16}{r[f'psi>{PSI_MAJOR}']:>10.2%}{r[f'psi>{PSI_MODERATE}']:>10.2%}{r[f'ks_p<{KS_ALPHA}']:>10.2%}{p99:>9}   {d:.2%}")
    fa = fresh["by_feature"]["any"]
    print(f"fresh queries of the same topics (not in the eval set): any feature PSI>0.25 {fa[f'psi>{PSI_MAJOR}']:.2%}, "
          f"PSI>0.1 {fa[f'psi>{PSI_MODERATE}']:.2%}, KS p<.01 {fa[f'ks_p<{KS_ALPHA}']:.2%}; per-feature PSI p99 max "
          f"{max(r['psi_p99'] for f, r in fresh['by_feature'].items() if f != 'any'):.3f}")
    print(f"row-level window before issue 16 (query norm, 2,000 rows): PSI>0.25 in {rows_before[f'psi>{PSI_MAJOR}']:.0%}"
          f" of windows, median {rows_before['psi_median']:.3f}")
    print(f"\n{'shift':<16}{'detected':>10}{'median req':>12}{'p90 req':>9}   first alerting features")
    for name, s in shifts.items():
        med = "-" if s["requests_to_alert_median"] is None else f"{s['requests_to_alert_median']:.0f}"
        p90 = "-" if s["requests_to_alert_p90"] is None else f"{s['requests_to_alert_p90']:.0f}"
        print(f"{name:<16}{s['detection_rate']:>10.0%}{med:>12}{p90:>9}   {s['first_alert_features']}")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
