"""The streaming gate at 100,000 and 1,000,000 rows: wall time vs the bare ONNX Runtime floor,
peak memory, local engine (1 and 2 workers) and Ray (a local cluster).

Eval sets: the synthetic benchmark's generator (training/synth.py, the demo's data) at
10,000 queries x 100 candidates for 1,000,000 rows (1,000 queries for 100,000), written in chunks
of 100 queries so that generating never holds the file in memory. Models: the demo's exports
(`make demo` writes demo-out/models): the collapsed V2 cross-attention baseline as candidate and V1
as baseline, default policy (14 passes of the candidate: full, 5 + 5 permuted ablations, 3
Shapley; 1 of the baseline; 10,000 bootstrap resamples).

Each run is `fusionguard gate` in a subprocess. Peak memory: /usr/bin/time's maximum RSS of the
gate process, and the peak of the summed RSS of its whole process tree sampled every 0.2 s (with
Ray that includes the raylet, the GCS and the actors, and counts shared pages more than once).
The gate's own stage times come from its junit.xml (`time.scoring` etc.); the Ray runs' per-actor
throughput is rows / scoring time / actors, Ray's start-up included. After the largest Ray run,
`data validate` and `monitor replay` run at every size (their peak RSS shows whether they stream).
The order puts the headline runs first; `--memory-repeats N` adds N more runs of the default
engine at each size for the run-to-run spread of the peak RSS.

The floor is bare ONNX Runtime doing the same forward passes (15 x N rows per model pair, in
session.run calls of the gate's 8,192 rows, inputs pre-built in memory, no reading, masking,
metrics or reports), measured on the 100,000-row set on both cores in the two layouts the gate
could use (one session with 2 intra-op threads; two single-thread sessions in two threads) and
the faster one kept. For 1,000,000 rows it is that floor times 10 (forward passes are linear in
the rows), stated as scaled.

Run:  nice .venv/bin/python -m benchmarks.streaming [--sizes 100000 1000000] [--ray-sizes 100000 1000000]
      [--memory-repeats 2] [--models demo-out/models]
Writes benchmarks/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "streaming.json"
CANDIDATES = 100
CHUNK_QUERIES = 100
PASSES = 15  # 14 candidate passes + 1 baseline pass under the default policy
RUN_ROWS = 8192


def make_eval_set(path: Path, n_queries: int, seed: int = 0) -> Path:
    """The synthetic benchmark's test distribution, n_queries x 100 candidates, written in chunks."""
    import pyarrow.parquet as pq

    from fusionguard.dataset import write_dataset
    from fusionguard.training.synth import SynthConfig, _generate, _unit

    if path.is_file():
        return path
    cfg = SynthConfig(seed=seed, n_candidates=CANDIDATES)
    rng = np.random.default_rng(seed)
    prototypes = _unit(rng.standard_normal((cfg.n_attributes, cfg.dim)))
    match_dir = _unit(rng.standard_normal(cfg.dim))
    tmp = path.with_suffix(".part.parquet")
    edges = None
    writer = None
    try:
        for first in range(0, n_queries, CHUNK_QUERIES):
            n_q = min(CHUNK_QUERIES, n_queries - first)
            qid, iid, z, feeds, _, _ = _generate(cfg, n_q, rng, prototypes, match_dir, first)
            if edges is None:  # label grades from the first chunk's quantiles (synth uses all splits')
                edges = np.quantile(z, cfg.grade_quantiles)
            label = np.digitize(z, edges).astype(np.int64)
            chunk = write_dataset(path.with_suffix(".chunk.parquet"), qid, iid, label, feeds)
            table = pq.read_table(chunk)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=65_536)
    finally:
        if writer is not None:
            writer.close()
        path.with_suffix(".chunk.parquet").unlink(missing_ok=True)
    tmp.rename(path)
    return path


def _tree_rss_kib(root: int) -> int:
    """Summed VmRSS of `root` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as fh:
                m = re.search(r"VmRSS:\s+(\d+)", fh.read())
            total += int(m.group(1)) if m else 0
        except OSError:
            continue
    return total


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v: wall time, max RSS, CPU share, the whole tree's peak RSS."""
    cmd = ["/usr/bin/time", "-v", *cmd]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", stderr)
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "max_rss_mib": int(rss.group(1)) / 1024 if rss else None,
        "tree_peak_rss_mib": peak[0] / 1024,
        "cpu_percent_of_one_core": int(cpu.group(1)) if cpu else None,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "stdout_tail": stdout[-400:],
        "stderr_tail": stderr[-400:] if proc.returncode not in (0, 1) else "",
    }


def _fusionguard() -> str:
    return str(Path(sys.executable).with_name("fusionguard"))


def run_gate(models: Path, data: Path, out: Path, extra: list[str]) -> dict:
    run = run_measured([_fusionguard(), "gate", "--candidate", str(models / "baseline.onnx"), "--baseline",
                        str(models / "v1.onnx"), "--data", str(data), "--out", str(out), *extra])
    run["verdict_line"] = next((line for line in run.pop("stdout_tail").splitlines() if line.startswith("gate:")), "")
    junit = out / "junit.xml"
    if junit.is_file():  # the gate's own stage times (seconds): scoring is the engine's part
        import xml.etree.ElementTree as ET

        run["stages_s"] = {p.get("name").removeprefix("time."): float(p.get("value"))
                           for p in ET.parse(junit).getroot().iter("property") if p.get("name", "").startswith("time.")}
    return run


def floor_seconds(models: Path, data: Path, rows: int) -> dict:
    """Bare ORT over PASSES x rows (candidate 14, baseline 1) on two cores, two layouts."""
    import onnxruntime as ort

    from fusionguard.contract import load_contract
    from fusionguard.dataset import iter_batches

    out = {}
    jobs = {"baseline.onnx": PASSES - 1, "v1.onnx": 1}
    blocks = {}
    for name in jobs:
        contract = load_contract(models / name)
        batch = next(iter_batches(data, contract, batch_rows=RUN_ROWS))
        blocks[name] = batch.feeds

    def work(sessions: list, share: int, n_threads: int) -> float:
        def one(i: int) -> None:
            for name, passes in jobs.items():
                total = passes * rows // share
                for _ in range(0, total, RUN_ROWS):
                    sessions[i][name].run(None, blocks[name])

        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(one, range(n_threads)))
        return time.perf_counter() - t0

    def sessions(threads: int) -> dict:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return {n: ort.InferenceSession(str(models / n), opts, providers=["CPUExecutionProvider"]) for n in jobs}

    out["one_session_2_threads_s"] = work([sessions(2)], 1, 1)
    out["two_sessions_1_thread_s"] = work([sessions(1), sessions(1)], 2, 2)
    out["one_session_1_thread_s"] = work([sessions(1)], 1, 1)
    out["floor_2_cores_s"] = min(out["one_session_2_threads_s"], out["two_sessions_1_thread_s"])
    return out


def driver_plan_rate(data: Path) -> dict:
    """Rows per second the Ray engine's driver plans: open the dataset, read its query ids and
    compute the batch ends (the actors read the inputs, so this is all the scoring stage asks of
    the driver; the data check still reads every input byte there, measured by `data validate`)."""
    from fusionguard.source import ParquetSource
    from fusionguard.streaming import batch_ends

    t0 = time.perf_counter()
    source = ParquetSource.open(data)
    ids = source.query_ids()
    ends = batch_ends(ids, 65_536 // (PASSES - 1), data)
    seconds = time.perf_counter() - t0
    return {"rows": int(ids.shape[0]), "batches": int(ends.shape[0]), "seconds": seconds, "rows_per_s": ids.shape[0] / seconds}


def markdown(result: dict) -> str:
    """The tables of docs/scale.md, from a results file (`--report FILE`)."""
    def load(run: dict) -> str:
        return f"{run['loadavg_before'][0]:.1f} → {run['loadavg_after'][0]:.1f}"

    lines = ["| eval set | engine | wall | × floor | gate CPU-s | peak RSS, gate process | peak RSS, process tree "
             "| scoring stage | load avg (1 min) before → after |", "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        run = {"ratio_to_floor": float("nan"), "floor_scaled": False, **run}
        cpu = run["wall_s"] * run["cpu_percent_of_one_core"] / 100 if run.get("cpu_percent_of_one_core") else float("nan")
        scoring = run.get("stages_s", {}).get("scoring", float("nan"))
        ratio = "—" if run["ratio_to_floor"] != run["ratio_to_floor"] else f"{run['ratio_to_floor']:.2f}"  # NaN: no floor
        lines.append(f"| {run['rows']:,} rows | {run['config']} | {run['wall_s']:.1f} s | {ratio}"
                     f"{' (floor scaled)' if run['floor_scaled'] else ''} | {cpu:.0f} | {run['max_rss_mib']:,.0f} MiB "
                     f"| {run['tree_peak_rss_mib']:,.0f} MiB | {scoring:.1f} s | {load(run)} |")
    lines += ["", "| eval set | command | wall | peak RSS | load avg before → after |", "|---|---|---|---|---|"]
    for run in result.get("other_commands", []):
        lines.append(f"| {run['rows']:,} rows | `{run['command']}` | {run['wall_s']:.1f} s | {run['max_rss_mib']:,.0f} MiB "
                     f"| {load(run)} |")
    f = result["floor"]
    lines += [] if not f else ["", f"Floor, {f['rows']:,} rows × 15 passes: one session with 2 threads {f['one_session_2_threads_s']:.1f} s, "
                  f"two single-thread sessions {f['two_sessions_1_thread_s']:.1f} s, one single-thread session "
                  f"{f['one_session_1_thread_s']:.1f} s (load avg at start {result['machine']['loadavg_at_start'][0]:.1f})."]
    if "driver_plan" in result:
        d = result["driver_plan"]
        lines.append(f"Ray driver's planning (ids + batch ends): {d['rows']:,} rows in {d['seconds']:.2f} s = "
                     f"{d['rows_per_s']:,.0f} rows/s.")
    for run in result["runs"]:
        if "rows_per_s_per_actor" in run:
            lines.append(f"Ray, {run['rows']:,} rows: {run['rows_per_s_per_actor']:,.0f} rows/s per actor "
                         "(rows / scoring stage / 2 actors; Ray's start-up included).")
    local = {}
    for run in result["runs"]:
        if run["config"] == "local, 2 workers":
            local.setdefault(run["rows"], []).append(run["max_rss_mib"])
    if len(local) >= 2:
        small, big = min(local), max(local)
        deltas = [b - a for a in local[small] for b in local[big]]
        lines.append(f"Peak RSS, local engine: {small:,} rows {', '.join(f'{v:,.0f}' for v in local[small])} MiB; "
                     f"{big:,} rows {', '.join(f'{v:,.0f}' for v in local[big])} MiB; difference over every pair "
                     f"{min(deltas):,.0f} to {max(deltas):,.0f} MiB.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="rows")
    parser.add_argument("--models", type=Path, default=Path("demo-out/models"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusionguard-bench-streaming"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file to write")
    parser.add_argument("--ray-sizes", type=int, nargs="*", default=None,
                        help="sizes to run the Ray engine at (default: all; none: no Ray)")
    parser.add_argument("--memory-repeats", type=int, default=0,
                        help="extra runs of the default engine at every size, for the run-to-run spread of peak RSS")
    parser.add_argument("--memory-only", action="store_true",
                        help="peak RSS of the default engine at every size (1 + --memory-repeats runs each), data validate, replay")
    parser.add_argument("--report", type=Path, default=None, help="print docs/scale.md's tables from this results file")
    args = parser.parse_args()
    if args.report is not None:
        print(markdown(json.loads(args.report.read_text(encoding="utf-8"))))
        return
    args.ray_sizes = args.sizes if args.ray_sizes is None else args.ray_sizes
    if not (args.models / "baseline.onnx").is_file():
        raise SystemExit(f"{args.models}/baseline.onnx is missing: run `make demo` first")
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": load},
                    "models": str(args.models), "runs": [], "floor": {}}
    rows_min = min(args.sizes)
    data_min = make_eval_set(args.work / f"eval_{rows_min}.parquet", rows_min // CANDIDATES)
    if args.memory_only:
        _memory_only(args, result)
        return
    result["floor"] = {"rows": rows_min, **floor_seconds(args.models, data_min, rows_min)}
    print(f"floor ({rows_min} rows, 15 passes, 2 cores): {result['floor']}", flush=True)
    result["driver_plan"] = driver_plan_rate(make_eval_set(args.work / f"eval_{max(args.sizes)}.parquet", max(args.sizes) // CANDIDATES))
    print(f"ray driver plans {result['driver_plan']['rows_per_s']:.0f} rows/s", flush=True)
    configs = {"local, 1 worker": ["--workers", "1"], "local, 2 workers": ["--workers", "2"],
               "ray (local cluster), 2 actors": ["--engine", "ray", "--workers", "2"]}
    big = max(args.sizes)
    # The essential runs first (a long benchmark on a shared machine keeps what it measured):
    # each size on the default engine, Ray, one worker on the small set, then memory repeats.
    plan = [(rows, "local, 2 workers") for rows in sorted(args.sizes)]
    plan += [(rows, "ray (local cluster), 2 actors") for rows in sorted(args.ray_sizes, reverse=True)]
    plan += [(rows_min, "local, 1 worker")]
    plan += [(rows, "local, 2 workers") for rows in sorted(args.sizes) for _ in range(args.memory_repeats)]
    for rows, name in plan:
        data = make_eval_set(args.work / f"eval_{rows}.parquet", rows // CANDIDATES)
        run = run_gate(args.models, data, args.work / f"out_{rows}_{len(result['runs'])}", configs[name])
        floor = result["floor"]["floor_2_cores_s"] * rows / rows_min
        run.update({"rows": rows, "config": name, "floor_2_cores_s": floor, "floor_scaled": rows != rows_min,
                    "ratio_to_floor": run["wall_s"] / floor})
        if name.startswith("ray") and "scoring" in run.get("stages_s", {}):
            # rows each actor scored per second (15 passes a row), Ray's start-up and actor creation included
            run["rows_per_s_per_actor"] = rows / run["stages_s"]["scoring"] / 2
        result["runs"].append(run)
        print(f"{rows:>9} {name:<32} wall {run['wall_s']:7.1f} s  floor {floor:6.1f} s  "
              f"x{run['ratio_to_floor']:.2f}  max RSS {run['max_rss_mib']:.0f} MiB  tree {run['tree_peak_rss_mib']:.0f} MiB  "
              f"exit {run['exit_code']}  load {run['loadavg_before'][0]:.1f}->{run['loadavg_after'][0]:.1f}", flush=True)
        write_results(args.results, result)  # after every run: a long benchmark keeps what it measured
        if rows == big and name == "ray (local cluster), 2 actors":
            _other_commands(args, result)  # data validate and monitor replay, once the headline runs are in
    write_results(args.results, result)


def _memory_only(args: argparse.Namespace, result: dict) -> None:
    """Peak RSS only: the default engine at every size, 1 + --memory-repeats times, interleaved
    (small, large, small, large...), then `data validate` and `monitor replay`. No floor, no Ray."""
    result["memory_only"] = True
    for repeat in range(1 + args.memory_repeats):
        for rows in sorted(args.sizes):
            data = make_eval_set(args.work / f"eval_{rows}.parquet", rows // CANDIDATES)
            run = run_gate(args.models, data, args.work / f"mem_{rows}_{repeat}", ["--workers", "2"])
            run.update({"rows": rows, "config": "local, 2 workers", "repeat": repeat})
            result["runs"].append(run)
            print(f"{rows:>9} local, 2 workers (memory {repeat})  wall {run['wall_s']:7.1f} s  max RSS {run['max_rss_mib']:.0f} MiB  "
                  f"exit {run['exit_code']}  load {run['loadavg_before'][0]:.1f}->{run['loadavg_after'][0]:.1f}", flush=True)
            write_results(args.results, result)
    _other_commands(args, result)


def _other_commands(args: argparse.Namespace, result: dict) -> None:
    """`data validate` and `monitor replay` at each size: do they stream with bounded memory?
    The replay samples 5% of requests for telemetry (the serving default), which keeps it short;
    its memory is the reading's and the requests', not the passes'."""
    models = args.models
    for rows in sorted(args.sizes):
        data = args.work / f"eval_{rows}.parquet"
        for name, cmd in {
            "data validate": [_fusionguard(), "data", "validate", str(data), "--model", str(models / "baseline.onnx"),
                              "--model", str(models / "v1.onnx")],
            "monitor replay (5% telemetry)": [_fusionguard(), "monitor", "replay", "--model", str(models / "baseline.onnx"),
                                              "--data", str(data), "--out", str(args.work / f"replay_{rows}.prom"),
                                              "--device", "cpu", "--telemetry-share", "0.05", "--telemetry-seed", "0"],
        }.items():
            run = run_measured(cmd)
            run.update({"rows": rows, "command": name})
            result.setdefault("other_commands", []).append(run)
            print(f"{rows:>9} {name:<32} wall {run['wall_s']:7.1f} s  max RSS {run['max_rss_mib']:.0f} MiB  "
                  f"exit {run['exit_code']}  load {run['loadavg_before'][0]:.1f}", flush=True)
            write_results(args.results, result)


if __name__ == "__main__":
    main()
