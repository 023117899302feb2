"""Serving throughput with a C load generator: bare ONNX Runtime, fusionguard, the KServe server.

One run, side by side, on the same request (binary tensors, the layout tritonclient sends) and the
same cores, driven by wrk (HTTP/1.1 keep-alive, one load thread, a fixed duration per row,
microsecond latency histogram; Debian's `wrk`, installed by `make tools`):

  stages            per-stage cost of one request in process: decode, validate, run, encode,
                    the thread hop, next to bare `session.run` (median of blocks of calls)
  ort bare          `InferenceSession.run` in a loop at the request's rows and at merged sizes
  fusionguard ...   `fusionguard monitor serve`, 1 and N workers, batching off/on, telemetry
                    share 0 / the default / 1.0
  kserve ...        the KServe Python model server (`kserve.Model` wrapping the same ONNX
                    Runtime session, OIP v2 REST), in its own virtual environment under
                    benchmarks/.work (its pins conflict with fusionguard's)

Every server uses one ONNX Runtime intra-op thread. Rows: requests/s, rows/s, wrk's p50/p99, the
server's CPU time per request (every process, from /proc) and, at concurrency 1, server overhead
= p50 minus bare `session.run`'s CPU time at the request's rows. Each configuration runs `--rounds` times
interleaved; the median round (by requests/s) is reported and every round is kept in the JSON.

`--telemetry-profile` instead measures only where a telemetry-sampled request's CPU goes (in
process: the app at share 0 and 1, the sampled request's deferred work on one thread, and the rest:
the hand-over to the telemetry thread); writes serving_telemetry.json.

`--soak` instead runs the new path (workers + batching + the default telemetry share) under
`wrk -c 32` for `--soak-seconds`, sampling the RSS of the supervisor and every worker.

Run:  make tools && nice .venv/bin/python -m benchmarks.serving            (about 5-8 minutes)
      nice .venv/bin/python -m benchmarks.serving --soak                    (--soak-seconds + ~30 s)
Writes benchmarks/results/serving.json (or serving_soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from benchmarks._common import add_results_options, printed_markdown, write_results  # noqa: E402
from benchmarks.monitor import _free_port, binary_body, make_feeds  # noqa: E402
from fusionguard import toymodels  # noqa: E402
from fusionguard.scorer import Scorer, feed_problems  # noqa: E402
from fusionguard.monitor.protocol import decode_request, encode_response  # noqa: E402
from fusionguard.monitor.service import TELEMETRY_MASKS, ServiceConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work"
KSERVE_PY = WORK / "kserve-venv" / "bin" / "python"
DEFAULT_SHARE = ServiceConfig.telemetry_share


# ----- in-process stages ----------------------------------------------------------------------

def _per_call_us(fn, calls: int, block: int = 50) -> dict[str, float]:
    """Per call, in microseconds, over blocks of `block` calls: the median and min wall time, and
    the median CPU time of this thread (less sensitive to other processes on a shared machine;
    equal to the work done when the call runs on this thread, as ONNX Runtime with one intra-op
    thread does)."""
    for _ in range(block):
        fn()
    wall, cpu = [], []
    for _ in range(max(1, calls // block)):
        t, c = time.perf_counter(), time.thread_time()
        for _ in range(block):
            fn()
        cpu.append((time.thread_time() - c) / block * 1e6)
        wall.append((time.perf_counter() - t) / block * 1e6)
    return {"median_us": float(np.median(wall)), "min_us": float(np.min(wall)), "cpu_median_us": float(np.median(cpu))}


def _asgi_requests(model: Path, feeds: dict[str, np.ndarray], calls: int, shares: list[float]) -> list[dict[str, float]]:
    """The whole app (routing, body, admission, decode, validate, run, encode, metrics, telemetry
    worker) called in process through ASGI, with no socket or HTTP parser: what the server adds
    above the network. One app per telemetry share, measured in alternating blocks of 50 requests
    so that a change in the machine's load hits every share alike. `cpu_median_us` is this
    process's CPU time (every thread: the telemetry worker runs a sampled request's masked passes
    and its metrics after the response) per request, each block ending once the worker is idle.
    `cpu_mean_us` is the mean over blocks: the telemetry cost is an expectation over a random
    number of sampled requests per block, which the median of blocks does not estimate."""
    import uvloop
    from prometheus_client import CollectorRegistry

    from fusionguard.monitor.app import AppConfig, MonitorApp
    from fusionguard.monitor.service import ModelService

    body, headers = binary_body(feeds)
    apps = [MonitorApp(ModelService(ServiceConfig(model=model, device="cpu", threads=1, telemetry_share=share)),
                       CollectorRegistry(), AppConfig(handle_sighup=False)) for share in shares]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v2/models/ranker/infer", "raw_path": b"/v2/models/ranker/infer", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(body)).encode()),
                    (b"inference-header-content-length", headers["Inference-Header-Content-Length"].encode())],
    }

    async def one(app) -> None:  # noqa: ANN001
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = []

        async def receive() -> dict:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"in-process request answered {status}")

    async def main() -> list[dict[str, float]]:
        lifespans = []
        for mapp in apps:
            life_in: asyncio.Queue = asyncio.Queue()
            life_out: asyncio.Queue = asyncio.Queue()
            await life_in.put({"type": "lifespan.startup"})
            task = asyncio.ensure_future(mapp.app({"type": "lifespan", "asgi": {"version": "3.0"}}, life_in.get, life_out.put))
            await life_out.get()
            lifespans.append((life_in, life_out, task))
            for _ in range(100):
                await one(mapp.app)
        wall: list[list[float]] = [[] for _ in apps]
        cpu: list[list[float]] = [[] for _ in apps]
        for _ in range(max(1, calls // 50)):
            for i, mapp in enumerate(apps):
                t, c = time.perf_counter(), time.process_time()
                for _ in range(50):
                    await one(mapp.app)
                wall[i].append((time.perf_counter() - t) / 50 * 1e6)
                if not mapp.worker.wait_idle():
                    raise RuntimeError("the telemetry worker did not finish its queue")
                cpu[i].append((time.process_time() - c) / 50 * 1e6)
        for life_in, life_out, task in lifespans:
            await life_in.put({"type": "lifespan.shutdown"})
            await life_out.get()
            await task
        return [{"median_us": float(np.median(w)), "min_us": float(np.min(w)), "cpu_median_us": float(np.median(c)),
                 "cpu_mean_us": float(np.mean(c))} for w, c in zip(wall, cpu)]

    return uvloop.run(main())


def _deferred_us(model: Path, feeds: dict[str, np.ndarray], calls: int) -> dict[str, float]:
    """What the app hands the telemetry worker for a sampled request (its three masked passes in
    one `session.run`, then `TelemetryWorker.process`), called synchronously on this thread: the
    sampled request's extra work without the hand-over to the worker thread."""
    from prometheus_client import CollectorRegistry

    from fusionguard.monitor.app import AppConfig, MonitorApp
    from fusionguard.monitor.service import ModelService

    app = MonitorApp(ModelService(ServiceConfig(model=model, device="cpu", threads=1, telemetry_share=1.0)),
                     CollectorRegistry(), AppConfig(handle_sighup=False))
    service = app.service
    state, masks = service.admit(feeds, True)
    served = service.run(state, feeds, masks[:1])
    return _per_call_us(lambda: app.worker.process(app._with_passes(served, masks, service.run(state, feeds, masks[1:]))),  # noqa: SLF001
                        calls)


def telemetry_profile(model: Path, feeds: dict[str, np.ndarray], calls: int) -> dict:
    """Where a sampled request's CPU goes: the app in process at share 0 and 1 (every thread's
    CPU per request, alternating blocks), and the deferred work of one sampled request called on
    this thread. What share 1 costs above share 0 and above that deferred work is the hand-over to
    the telemetry thread (queue, wake-ups, the GIL passed between the event loop and the worker)."""
    app0, app1 = _asgi_requests(model, feeds, calls, [0.0, 1.0])
    deferred = _deferred_us(model, feeds, calls)
    extra = app1["cpu_mean_us"] - app0["cpu_mean_us"]
    return {"app_share0_us": app0, "app_share1_us": app1, "deferred_on_this_thread_us": deferred,
            "sampled_request_extra_cpu_us": extra, "handover_cpu_us": extra - deferred["cpu_median_us"],
            "predicted_cost_at_default_share": DEFAULT_SHARE * extra / app0["cpu_mean_us"],
            "predicted_cost_at_default_share_without_handover": DEFAULT_SHARE * deferred["cpu_median_us"] / app0["cpu_mean_us"]}


def stages(model: Path, feeds: dict[str, np.ndarray], calls: int) -> dict[str, dict[str, float]]:
    body, headers = binary_body(feeds)
    headers = {k.lower(): v for k, v in headers.items()}
    scorer = Scorer(model, device="cpu", threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    bare = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    req = decode_request(body, headers)
    full = scorer.run_valid(req.inputs)[0]
    outputs = {"score": full.score, "attention": full.attention}

    async def hops(n: int) -> None:
        import anyio.to_thread

        for _ in range(n):
            await anyio.to_thread.run_sync(int)

    def hop_us() -> dict[str, float]:
        import uvloop

        per = []
        for _ in range(max(1, calls // 50)):
            t = time.perf_counter()
            uvloop.run(hops(50))
            per.append((time.perf_counter() - t) / 50 * 1e6)
        return {"median_us": float(np.median(per)), "min_us": float(np.min(per)), "cpu_median_us": float("nan")}

    out = {
        "decode (binary body -> arrays)": _per_call_us(lambda: decode_request(body, headers), calls),
        "validate (feed_problems)": _per_call_us(lambda: feed_problems(scorer.contract, req.inputs), calls),
        "run (Scorer.run_valid, 1 pass)": _per_call_us(lambda: scorer.run_valid(req.inputs), calls),
        "run with telemetry (4 passes)": _per_call_us(lambda: scorer.run_valid(req.inputs, TELEMETRY_MASKS), calls),
        "bare session.run": _per_call_us(lambda: bare.run(None, req.inputs), calls),
        "encode (binary response)": _per_call_us(lambda: encode_response("ranker", "v", outputs, req), calls),
        "thread hop (anyio.to_thread on uvloop)": hop_us(),
    }
    shares = [0.0, DEFAULT_SHARE, 1.0]
    for share, t in zip(shares, _asgi_requests(model, feeds, calls * 2, shares)):
        out[f"app in process, share={share:g} (ASGI, no socket)"] = t
    return out


def bare_rows(model: Path, feeds: dict[str, np.ndarray], multiples: list[int], calls: int) -> dict[str, dict]:
    """Bare session.run at the request's rows x k: median ms per call and rows/s."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    out = {}
    for k in multiples:
        big = {name: np.concatenate([v] * k) for name, v in feeds.items()}
        t = _per_call_us(lambda big=big: sess.run(None, big), max(20, calls // k), block=max(1, 20 // k))
        rows = next(iter(big.values())).shape[0]
        out[str(rows)] = {"rows": rows, "median_ms": t["median_us"] / 1e3, "rows_per_s": rows / (t["median_us"] / 1e6)}
    return out


# ----- servers and the load generator --------------------------------------------------------

class Server:
    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/v2/models/ranker/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"{name} did not start: {self.log.read().decode()[-3000:]}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with_children = Path(f"/proc/{pid}/task/{pid}/children")
            if with_children.exists():
                todo.extend(int(c) for c in with_children.read_text().split())
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server's processes so far (every worker)."""
        total, tick = 0, os.sysconf("SC_CLK_TCK")
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
        return total / tick

    def rss_mib(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except FileNotFoundError:
                pass
        return total

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def fusionguard_server(model: Path, share: float, workers: int = 1, batch_rows: int = 0, delay_us: int = 0,
                       device: str = "cpu") -> Server:
    port = _free_port()
    cmd = [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--model", str(model), "--device", device,
           "--threads", "1", "--telemetry-share", str(share), "--port", str(port), "--workers", str(workers),
           "--max-batch-rows", str(batch_rows), "--max-queue-delay-us", str(delay_us),
           "--max-concurrency", "1024", "--log-level", "warning"]
    return Server("fusionguard", cmd, port)


def kserve_server(model: Path, workers: int = 1) -> Server:
    port = _free_port()
    cmd = [str(KSERVE_PY), str(ROOT / "kserve_model.py"), "--model", str(model), "--port", str(port),
           "--grpc-port", str(_free_port()), "--workers", str(workers), "--threads", "1"]
    return Server("kserve", cmd, port)


def load(url: str, body_file: Path, header_len: int, seconds: float, concurrency: int) -> dict:
    """wrk (HTTP/1.1 keep-alive, one thread) for `seconds` at `concurrency` connections: requests/s,
    p50/p99 (wrk's microsecond histogram) and error counts."""
    cmd = ["wrk", "-t1", "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "30s",
           "-s", str(ROOT / "wrk_post.lua"), url + "/v2/models/ranker/infer"]
    env = {**os.environ, "FG_BODY": str(body_file), "FG_HLEN": str(header_len)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env)
    m = re.search(r"^RESULT (.*)$", r.stdout, re.M)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
    v = {k: int(x) for k, x in (kv.split("=") for kv in m.group(1).split())}
    return {
        "requests": v["requests"],
        "rps": v["requests"] / (v["duration_us"] / 1e6),
        "p50_ms": v["p50_us"] / 1e3,
        "p99_ms": v["p99_us"] / 1e3,
        "errors": v["socket_errors"] + v["status_errors"],
    }


def merged_totals(url: str) -> tuple[float, float]:
    """(requests merged, merged calls) so far, from /metrics ((0, 0) without batching)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    s = re.search(r'^fusionguard_merged_requests_sum\{model="ranker"\} ([\d.e+]+)', text, re.M)
    c = re.search(r'^fusionguard_merged_requests_count\{model="ranker"\} ([\d.e+]+)', text, re.M)
    return (float(s.group(1)) if s else 0.0), (float(c.group(1)) if c else 0.0)


# ----- the run ---------------------------------------------------------------------------------

def configurations(args: argparse.Namespace, have_kserve: bool) -> list[tuple[str, callable, list[int]]]:
    n, c = args.workers, args.concurrency
    batch = dict(batch_rows=args.max_batch_rows, delay_us=args.max_queue_delay_us)
    rows = [
        ("fusionguard 1w share=0", lambda m: fusionguard_server(m, 0.0), [1, c]),
        (f"fusionguard 1w share={DEFAULT_SHARE:g} (default)", lambda m: fusionguard_server(m, DEFAULT_SHARE), [1, c]),
        ("fusionguard 1w share=1", lambda m: fusionguard_server(m, 1.0), [1, c]),
        ("fusionguard 1w share=0 batching", lambda m: fusionguard_server(m, 0.0, **batch), [1, c]),
        (f"fusionguard {n}w share=0", lambda m: fusionguard_server(m, 0.0, workers=n), [c]),
        (f"fusionguard {n}w share=0 batching", lambda m: fusionguard_server(m, 0.0, workers=n, **batch), [c]),
        (f"fusionguard {n}w share={DEFAULT_SHARE:g} batching", lambda m: fusionguard_server(m, DEFAULT_SHARE, workers=n, **batch), [c]),
    ]
    if have_kserve:
        rows += [
            ("kserve 1w", lambda m: kserve_server(m), [1, c]),
            (f"kserve {n}w", lambda m: kserve_server(m, workers=n), [c]),
        ]
    return rows


def _request_file(feeds: dict[str, np.ndarray], work: Path) -> tuple[Path, int]:
    """The binary request body, written to WORK/request.bin for wrk, and its JSON header's length."""
    body, headers = binary_body(feeds)
    body_file = work / "request.bin"
    body_file.write_bytes(body)
    return body_file, int(headers["Inference-Header-Content-Length"])


def run(args: argparse.Namespace, model: Path, feeds: dict[str, np.ndarray], work: Path) -> dict:
    body_file, header_len = _request_file(feeds, work)
    rows_per_request = next(iter(feeds.values())).shape[0]
    have_kserve = KSERVE_PY.exists()
    if not have_kserve:
        print(f"no KServe environment at {KSERVE_PY}: create it with\n  python3 -m venv {KSERVE_PY.parent.parent} && "
              f"{KSERVE_PY.parent}/pip install kserve onnxruntime==1.31.*\n(the KServe rows are left out)")
    print("stages ...", flush=True)
    stage = stages(model, feeds, args.stage_calls)
    bare = bare_rows(model, feeds, [1, 2, 4, 8, 16, 32], args.stage_calls)
    configs = configurations(args, have_kserve)
    rounds: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for name, start, concurrencies in configs:
            server = start(model)
            try:
                load(server.url, body_file, header_len, 1, 4)  # warm-up
                for conc in concurrencies:
                    before = merged_totals(server.url) if server.name == "fusionguard" else (0.0, 0.0)
                    cpu = server.cpu_s()
                    res = load(server.url, body_file, header_len, args.seconds, conc)
                    cpu = server.cpu_s() - cpu
                    after = merged_totals(server.url) if server.name == "fusionguard" else (0.0, 0.0)
                    # server CPU per request: independent of how much of the cores the server got
                    res["server_cpu_us_per_request"] = cpu / max(res["requests"], 1) * 1e6
                    res["loadavg_1min"] = os.getloadavg()[0]
                    calls = after[1] - before[1]  # this run's merged calls only (not the warm-up's)
                    res["merged_requests_mean"] = (after[0] - before[0]) / calls if calls else None
                    res["round"] = r
                    rounds.setdefault(f"{name} c={conc}", []).append(res)
                    print(f"  {name} c={conc}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms "
                          f"server CPU {res['server_cpu_us_per_request']:.0f} us/req "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            finally:
                server.stop()
    # the model's own time: its CPU time (one intra-op thread), which the machine's load does not inflate
    model_ms = stage["bare session.run"]["cpu_median_us"] / 1e3
    table = {}
    for key, runs in rounds.items():
        best = sorted(runs, key=lambda x: x["rps"])[(len(runs) - 1) // 2]  # the median round (lower middle)
        row = {**best, "rows_per_s": best["rps"] * rows_per_request, "rounds_rps": [x["rps"] for x in runs],
               # the median over rounds, apart from the round chosen by requests/s
               "server_cpu_us_per_request": float(np.median([x["server_cpu_us_per_request"] for x in runs]))}
        if key.endswith(" c=1"):
            row["server_overhead_ms"] = best["p50_ms"] - model_ms
        if best.get("merged_requests_mean"):
            merged_rows = best["merged_requests_mean"] * rows_per_request
            nearest = min(bare.values(), key=lambda b: abs(b["rows"] - merged_rows))
            row["merged_rows_mean"] = merged_rows
            row["bare_ort_rows_per_s_at_merged_size"] = nearest["rows_per_s"]
            row["bare_ort_merged_size_used"] = nearest["rows"]
            row["rows_per_s_vs_bare_at_merged_size"] = row["rows_per_s"] / nearest["rows_per_s"]
            # why: the model's share of what the server spends per request (CPU, load-independent)
            model_us = rows_per_request / nearest["rows_per_s"] * 1e6
            row["model_us_per_request_at_merged_size"] = model_us
            row["model_share_of_server_cpu"] = model_us / row["server_cpu_us_per_request"]
        table[key] = row
    ratios = _ratios(table, args)
    app0 = stage["app in process, share=0 (ASGI, no socket)"]
    for share in (DEFAULT_SHARE, 1.0):
        app = stage[f"app in process, share={share:g} (ASGI, no socket)"]
        ratios[f"telemetry share={share:g} cost in process, CPU of every thread (mean over blocks / share-0's - 1)"] = (
            app["cpu_mean_us"] / app0["cpu_mean_us"] - 1)
        ratios[f"telemetry share={share:g} cost in process, wall (median_us / share-0 median_us - 1)"] = (
            app["median_us"] / app0["median_us"] - 1)
    ratios["server overhead in process, CPU us (app share=0 minus bare session.run)"] = (
        app0["cpu_median_us"] - stage["bare session.run"]["cpu_median_us"])
    parts = ("decode (binary body -> arrays)", "validate (feed_problems)", "run (Scorer.run_valid, 1 pass)",
             "encode (binary response)")
    ratios["app glue in process, CPU us (app share=0 minus decode, validate, run, encode)"] = (
        app0["cpu_median_us"] - sum(stage[k]["cpu_median_us"] for k in parts))
    over_http = table.get("fusionguard 1w share=0 c=1", {}).get("server_cpu_us_per_request")
    if over_http:
        ratios["HTTP layer CPU us per request at c=1 (server CPU over HTTP minus the app in process)"] = (
            over_http - app0["cpu_median_us"])
    return {"stages_us": stage, "ort_bare": bare, "rows": table, "ratios": ratios}


def _ratios(table: dict, args: argparse.Namespace) -> dict:
    c, n = args.concurrency, args.workers
    get = lambda key: table.get(key, {}).get("rps")  # noqa: E731
    out = {}
    base, default = get(f"fusionguard 1w share=0 c={c}"), get(f"fusionguard 1w share={DEFAULT_SHARE:g} (default) c={c}")
    if base and default:
        out[f"telemetry default share cost at c={c} (1 - rps_default / rps_share0)"] = 1 - default / base
        cpu = lambda key: table[key]["server_cpu_us_per_request"]  # noqa: E731
        out[f"telemetry default share cost at c={c}, server CPU per request (cpu_default / cpu_share0 - 1)"] = (
            cpu(f"fusionguard 1w share={DEFAULT_SHARE:g} (default) c={c}") / cpu(f"fusionguard 1w share=0 c={c}") - 1)
    base1, default1 = get("fusionguard 1w share=0 c=1"), get(f"fusionguard 1w share={DEFAULT_SHARE:g} (default) c=1")
    if base1 and default1:
        out["telemetry default share cost at c=1"] = 1 - default1 / base1
    for workers in (1, n):
        ks = get(f"kserve {workers}w c={c}")
        if not ks:
            continue
        for key in table:
            if key.startswith(f"fusionguard {workers}w") and key.endswith(f"c={c}"):
                out[f"{key} / kserve {workers}w c={c}"] = table[key]["rps"] / ks
    return out


def soak(args: argparse.Namespace, model: Path, feeds: dict[str, np.ndarray], work: Path) -> dict:
    body_file, header_len = _request_file(feeds, work)
    server = fusionguard_server(model, DEFAULT_SHARE, workers=args.workers, batch_rows=args.max_batch_rows,
                                delay_us=args.max_queue_delay_us)
    try:
        load(server.url, body_file, header_len, 5, args.concurrency)  # warm-up: allocators and caches settle
        rss = [server.rss_mib()]
        totals = {"requests": 0, "errors": 0}
        start = time.monotonic()
        while time.monotonic() - start < args.soak_seconds:
            res = load(server.url, body_file, header_len, args.soak_step_seconds, args.concurrency)
            for k in totals:
                totals[k] += res[k]
            rss.append(server.rss_mib())
        seconds = time.monotonic() - start
        text = httpx.get(server.url + "/metrics", timeout=10).text
    finally:
        code = server.stop()
    ok = re.search(r'^fusionguard_requests_total\{model="ranker",outcome="ok"\} ([\d.e+]+)', text, re.M)
    dropped = re.search(r'^fusionguard_telemetry_dropped_total\{model="ranker"\} ([\d.e+]+)', text, re.M)
    growth = rss[-1] - rss[0]
    return {
        "workers": args.workers, "max_batch_rows": args.max_batch_rows, "max_queue_delay_us": args.max_queue_delay_us,
        "telemetry_share": DEFAULT_SHARE, "concurrency": args.concurrency, "seconds": seconds, **totals,
        "server_ok_total": float(ok.group(1)) if ok else None,
        "telemetry_dropped_total": float(dropped.group(1)) if dropped else None,
        "rps": totals["requests"] / seconds,
        "rss_mib_samples": rss, "rss_growth_mib": growth, "rss_bound_mib": args.rss_bound_mib,
        "within_bound": growth <= args.rss_bound_mib, "shutdown_exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed load per configuration and concurrency")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="N of the multi-worker rows")
    parser.add_argument("--max-batch-rows", type=int, default=1024)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stage-calls", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=32, help="rows per request")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="text and visual tokens per candidate")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--telemetry-profile", action="store_true",
                        help="only where a telemetry-sampled request's CPU goes (in process; -> serving_telemetry.json)")
    parser.add_argument("--soak-seconds", type=float, default=180)
    parser.add_argument("--soak-step-seconds", type=float, default=15.0, help="seconds per wrk call (one RSS sample each)")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    add_results_options(parser)
    args = parser.parse_args()
    if printed_markdown(args, markdown):
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make tools` installs Debian's wrk")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = toymodels.save(
            toymodels.build_fusion_model(1.0, dim=args.dim, n_text=args.tokens, n_visual=args.tokens, n_heads=args.heads),
            work / "fusion.onnx",
        )
        feeds = make_feeds(args.candidates, args.dim, args.tokens, args.tokens)
        setup = {
            "candidates_per_request": args.candidates, "dim": args.dim, "tokens": args.tokens, "heads": args.heads,
            "request_bytes": len(binary_body(feeds)[0]), "concurrency": args.concurrency, "workers": args.workers,
            "max_batch_rows": args.max_batch_rows, "max_queue_delay_us": args.max_queue_delay_us,
            "load_generator": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, onnxruntime {ort.__version__}",
            "loadavg_at_start": os.getloadavg(),
        }
        if args.telemetry_profile:
            result = {"setup": setup, "telemetry_profile": telemetry_profile(model, feeds, args.stage_calls)}
            result["setup"]["loadavg_at_end"] = os.getloadavg()
            print(json.dumps(result["telemetry_profile"], indent=1))
            out = args.out or RESULTS / "serving_telemetry.json"
        elif args.soak:
            result = {"setup": setup, "soak": soak(args, model, feeds, work)}
            s = result["soak"]
            print(f"soak: {s['requests']} requests in {s['seconds']:.0f} s ({s['rps']:.0f} req/s), {s['errors']} errors; RSS {s['rss_mib_samples'][0]:.0f} -> {s['rss_mib_samples'][-1]:.0f} MiB "
                  f"(growth {s['rss_growth_mib']:+.1f}, bound {s['rss_bound_mib']:.0f}); shutdown exit {s['shutdown_exit_code']}")
            out = args.out or RESULTS / "serving_soak.json"
        else:
            result = {"setup": setup, **run(args, model, feeds, work)}
            result["setup"]["loadavg_at_end"] = os.getloadavg()
            _print(result)
            out = args.out or RESULTS / "serving.json"
    write_results(out, result)


def markdown(result: dict) -> str:
    """The tables of docs/monitor.md ("Measured") from a results file of this benchmark."""
    out = ["| stage | wall median µs (min) | CPU µs |", "|---|---:|---:|"]
    for name, t in result["stages_us"].items():
        cpu = t.get("cpu_mean_us", t["cpu_median_us"]) if name.startswith("app in process") else t["cpu_median_us"]
        out.append(f"| {name} | {t['median_us']:,.1f} ({t['min_us']:,.1f}) | {cpu:,.1f} |")
    out += ["", "| configuration | req/s | rows/s | p50 ms | p99 ms | overhead ms | server CPU µs/req | load | rounds req/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in result["rows"].items():
        ovh = f"{r['server_overhead_ms']:.3f}" if "server_overhead_ms" in r else ""
        rounds = ", ".join(f"{x:,.0f}" for x in r["rounds_rps"])
        out.append(f"| {name} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:,.2f} | {r['p99_ms']:,.1f} | {ovh} | "
                   f"{r.get('server_cpu_us_per_request', float('nan')):,.0f} | {r.get('loadavg_1min', float('nan')):.1f} | {rounds} |")
    bare = result["ort_bare"]
    out.append("| bare `session.run`, " + " / ".join(bare) + " rows | | " + " / ".join(f"{b['rows_per_s']:,.0f}" for b in bare.values())
               + " | " + " / ".join(f"{b['median_ms']:.3f}" for b in bare.values()) + " | | | | | |")
    out += [""] + [f"- {name}: {v:.3f}" for name, v in result["ratios"].items()]
    for name, r in result["rows"].items():
        if "rows_per_s_vs_bare_at_merged_size" in r:
            out.append(f"- {name}: merged {r['merged_rows_mean']:.0f} rows per call; rows/s vs bare ONNX Runtime at "
                       f"{r['bare_ort_merged_size_used']} rows: {r['rows_per_s_vs_bare_at_merged_size']:.3f}; the model is "
                       f"{r['model_us_per_request_at_merged_size']:.0f} µs of {r['server_cpu_us_per_request']:.0f} µs server CPU "
                       f"per request ({r['model_share_of_server_cpu']:.1%})")
    setup = result["setup"]
    out.append(f"\nLoad average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in setup['loadavg_at_start'])} at the start, "
               f"{', '.join(f'{x:.1f}' for x in setup.get('loadavg_at_end', []))} at the end.")
    return "\n".join(out)


def _print(result: dict) -> None:
    print(f"\n{'stage':44s} {'median us':>10s} {'min us':>8s} {'cpu us':>8s} {'cpu mean':>8s}")
    for name, t in result["stages_us"].items():
        print(f"{name:44s} {t['median_us']:10.1f} {t['min_us']:8.1f} {t['cpu_median_us']:8.1f} {t.get('cpu_mean_us', float('nan')):8.1f}")
    print(f"\n{'configuration':52s} {'req/s':>8s} {'rows/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'ovh ms':>7s} {'cpu us':>7s} {'errors':>6s}")
    for name, r in result["rows"].items():
        ovh = f"{r['server_overhead_ms']:7.3f}" if "server_overhead_ms" in r else " " * 7
        print(f"{name:52s} {r['rps']:8.0f} {r['rows_per_s']:9.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {ovh} "
              f"{r['server_cpu_us_per_request']:7.0f} {r['errors']:6d}")
    print()
    for name, v in result["ratios"].items():
        print(f"{name}: {v:.3f}")
    for name, r in result["rows"].items():
        if "rows_per_s_vs_bare_at_merged_size" in r:
            print(f"{name}: merged {r['merged_rows_mean']:.0f} rows/call, rows/s vs bare ORT at "
                  f"{r['bare_ort_merged_size_used']} rows: {r['rows_per_s_vs_bare_at_merged_size']:.3f}; "
                  f"model {r['model_us_per_request_at_merged_size']:.0f} us of {r['server_cpu_us_per_request']:.0f} us "
                  f"server CPU per request ({r['model_share_of_server_cpu']:.1%})")


if __name__ == "__main__":
    main()
