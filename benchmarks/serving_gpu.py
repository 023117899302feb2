"""The monitor's GPU path, measured once on a machine with an NVIDIA GPU (issue 18, item 4).

Needs onnxruntime-gpu (the `gpu` extra) and wrk on the PATH. One run, four parts:

  provider      does `--device cuda` get the CUDA execution provider, with pinned staging buffers
  agreement     fusionguard's CUDA scores (I/O binding) against its CPU scores on the same feeds,
                every telemetry pass (full, text masked, visual masked, both): max |difference|
                and whether every query's ranking is the same
  model time    bare `InferenceSession.run` on the CPU (one intra-op thread) and on CUDA (plain
                numpy feeds), and fusionguard's CUDA path (`Scorer.run_valid`, I/O binding), at
                the request's rows and at merged batch sizes: median ms per call and rows/s
  http          `fusionguard monitor serve` on `--device cpu` and `--device cuda`, one worker,
                under wrk: concurrency 1 (share 0) and concurrency 32 with dynamic batching (share
                0 and the default share); requests/s, rows/s, p50/p99 and server CPU per request

The request is benchmarks/serving.py's (toy fusion model, D=64, 16 + 16 tokens, 8 heads, 32
candidates). Pin the process to the cores the comparison should have (`taskset -c ...`): the
server, wrk and this script share them, as on the 2-core CI machine.

Run:  taskset -c 0,1 python -m benchmarks.serving_gpu --out benchmarks/results/serving_gpu_<machine>.json
      python -m benchmarks.serving_gpu --markdown benchmarks/results/serving_gpu_h200.json   (docs' tables)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from benchmarks._common import add_results_options, printed_markdown, write_results  # noqa: E402
from benchmarks.monitor import make_feeds  # noqa: E402
from benchmarks.serving import _per_call_us, _request_file, fusionguard_server, load  # noqa: E402
from fusionguard import toymodels  # noqa: E402
from fusionguard.scorer import Scorer  # noqa: E402
from fusionguard.monitor.service import TELEMETRY_MASKS, ServiceConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _gpu_name() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi unavailable: {err}"


def provider(model: Path) -> dict:
    scorer = Scorer(model, device="cuda", threads=1)
    binding = scorer._binding  # noqa: SLF001 - the benchmark reports which path ran
    return {"available": ort.get_available_providers(), "scorer_provider": scorer.provider,
            "io_binding": binding is not None, "pinned_staging": bool(binding is not None and binding.pinned)}


def agreement(model: Path, feeds: dict[str, np.ndarray], multiples: list[int]) -> dict:
    cpu = Scorer(model, device="cpu", threads=1)
    gpu = Scorer(model, device="cuda", threads=1)
    out = {}
    for k in multiples:
        big = {name: np.concatenate([v] * k) for name, v in feeds.items()}
        rows = next(iter(big.values())).shape[0]
        a = cpu.run_valid(big, TELEMETRY_MASKS)
        b = gpu.run_valid(big, TELEMETRY_MASKS)
        per_pass = {}
        for mask, x, y in zip(TELEMETRY_MASKS, a, b):
            q = x.score.reshape(k, -1)  # one "query" per copy of the request
            r = y.score.reshape(k, -1)
            per_pass[str(mask)] = {
                "max_abs_diff": float(np.max(np.abs(x.score - y.score))),
                "max_abs_score": float(np.max(np.abs(x.score))),
                "same_ranking_every_query": bool(all((np.argsort(-q[i], kind="stable") == np.argsort(-r[i], kind="stable")).all()
                                                     for i in range(k))),
            }
        out[str(rows)] = per_pass
    return out


def model_time(model: Path, feeds: dict[str, np.ndarray], multiples: list[int], calls: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    cpu = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    cuda = ort.InferenceSession(str(model), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    scorer = Scorer(model, device="cuda", threads=1)
    out = {}
    for k in multiples:
        big = {name: np.concatenate([v] * k) for name, v in feeds.items()}
        rows = next(iter(big.values())).shape[0]
        n = max(20, calls // k)
        row = {}
        for name, fn in (("cpu bare session.run (1 thread)", lambda big=big: cpu.run(None, big)),
                         ("cuda bare session.run (numpy feeds)", lambda big=big: cuda.run(None, big)),
                         ("cuda fusionguard Scorer.run_valid (I/O binding)", lambda big=big: scorer.run_valid(big)),
                         ("cuda fusionguard, 4 telemetry passes", lambda big=big: scorer.run_valid(big, TELEMETRY_MASKS))):
            for _ in range(3):
                fn()  # warm-up: CUDA kernels, staging buffers
            t = _per_call_us(fn, n, block=max(1, min(20, n // 5)))
            row[name] = {"median_ms": t["median_us"] / 1e3, "rows_per_s": rows / (t["median_us"] / 1e6)}
        out[str(rows)] = {"rows": rows, **row}
        print(f"  rows {rows}: " + ", ".join(f"{name.split(' (')[0]} {v['median_ms']:.3f} ms" for name, v in row.items()), flush=True)
    return out


def http(model: Path, feeds: dict[str, np.ndarray], work: Path, seconds: float, batch_rows: int) -> dict:
    body_file, header_len = _request_file(feeds, work)
    rows = next(iter(feeds.values())).shape[0]
    out = {}
    for device in ("cpu", "cuda"):
        for label, share, conc, batch in (("share=0 c=1", 0.0, 1, 0),
                                          (f"batching {batch_rows} rows, share=0 c=32", 0.0, 32, batch_rows),
                                          (f"batching {batch_rows} rows, share={ServiceConfig.telemetry_share:g} c=32",
                                           ServiceConfig.telemetry_share, 32, batch_rows)):
            key = f"{device} {label}"
            try:
                server = fusionguard_server(model, share, batch_rows=batch, device=device)
            except RuntimeError as err:
                out[key] = {"error": str(err)[-2000:]}
                print(f"  {key}: server did not start", flush=True)
                continue
            try:
                load(server.url, body_file, header_len, 1, 4)  # warm-up
                cpu = server.cpu_s()
                res = load(server.url, body_file, header_len, seconds, conc)
                res["server_cpu_us_per_request"] = (server.cpu_s() - cpu) / max(res["requests"], 1) * 1e6
                res["rows_per_s"] = res["rps"] * rows
                out[key] = res
                print(f"  {key}: {res['rps']:.0f} req/s, {res['rows_per_s']:.0f} rows/s, p50 {res['p50_ms']:.2f} ms, "
                      f"p99 {res['p99_ms']:.2f} ms, server CPU {res['server_cpu_us_per_request']:.0f} us/req", flush=True)
            finally:
                server.stop()
    return out


def markdown(result: dict) -> str:
    """docs/monitor.md's GPU tables from a results file of this benchmark."""
    setup, prov = result["setup"], result.get("provider", {})
    lines = [f"Machine: {setup['gpu']}; {setup['machine']}.",
             f"Provider: {prov.get('scorer_provider')}, I/O binding {prov.get('io_binding')}, pinned staging "
             f"{prov.get('pinned_staging')}.", ""]
    worst = max((p["max_abs_diff"] for rows in result.get("agreement", {}).values() if isinstance(rows, dict)
                 for p in rows.values() if isinstance(p, dict) and "max_abs_diff" in p), default=None)
    same = all(p.get("same_ranking_every_query") for rows in result.get("agreement", {}).values() if isinstance(rows, dict)
               for p in rows.values() if isinstance(p, dict))
    lines += [f"CUDA vs CPU scores, every telemetry pass at {', '.join(result.get('agreement', {}))} rows: max |difference| "
              f"{worst:.2g}, same ranking in every query: {same}.", ""]
    times = result.get("model_time", {})
    if times and "error" not in times:
        names = [k for k in next(iter(times.values())) if k != "rows"]
        staging = "pinned" if prov.get("pinned_staging") else "unpinned"  # what the run had, whatever the label said
        label = lambda n: n.replace("I/O binding, pinned", "I/O binding").replace("I/O binding", f"I/O binding, {staging}")  # noqa: E731
        lines += ["| rows | " + " | ".join(f"{label(n)}: ms (rows/s)" for n in names) + " |", "|---:|" + "---:|" * len(names)]
        for row in times.values():
            lines.append(f"| {row['rows']:,} | " + " | ".join(f"{row[n]['median_ms']:.3f} ({row[n]['rows_per_s']:,.0f})" for n in names) + " |")
        lines.append("")
    rows = result.get("http", {})
    if rows and "error" not in rows:
        lines += ["| server | requests/s | rows/s | p50 ms | p99 ms | server CPU µs/request |", "|---|---:|---:|---:|---:|---:|"]
        for key, r in rows.items():
            if "error" in r:
                lines.append(f"| {key} | did not start | | | | |")
                continue
            lines.append(f"| {key} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['server_cpu_us_per_request']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed wrk load per row")
    parser.add_argument("--calls", type=int, default=2000, help="calls per model-time measurement at the request's rows")
    parser.add_argument("--max-batch-rows", type=int, default=1024)
    parser.add_argument("--candidates", type=int, default=32)
    add_results_options(parser)
    args = parser.parse_args()
    if printed_markdown(args, markdown):
        return
    out = args.out or RESULTS / "serving_gpu.json"
    result: dict = {"setup": {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, affinity {sorted(os.sched_getaffinity(0))}, "
                   f"{platform.python_version()}, onnxruntime {ort.__version__}",
        "gpu": _gpu_name(), "candidates_per_request": args.candidates, "dim": 64, "tokens": 16, "heads": 8,
        "max_batch_rows": args.max_batch_rows, "seconds_per_http_row": args.seconds,
    }}
    multiples = [1, 8, 32, 128, 512]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = toymodels.save(toymodels.build_fusion_model(1.0, dim=64, n_text=16, n_visual=16, n_heads=8), work / "fusion.onnx")
        feeds = make_feeds(args.candidates, 64, 16, 16)
        for name, fn in (("provider", lambda: provider(model)),
                         ("agreement", lambda: agreement(model, feeds, [1, 32])),
                         ("model_time", lambda: model_time(model, feeds, multiples, args.calls)),
                         ("http", lambda: http(model, feeds, work, args.seconds, args.max_batch_rows))):
            print(f"{name} ...", flush=True)
            t = time.perf_counter()
            try:
                result[name] = fn()
            except Exception as err:  # noqa: BLE001 - one part failing must not lose the others
                result[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
                print(result[name]["traceback"], file=sys.stderr, flush=True)
            result.setdefault("seconds", {})[name] = time.perf_counter() - t
            write_results(out, result)  # after every part: a run cut short keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
