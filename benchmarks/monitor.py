"""Monitor overhead: plain ONNX Runtime vs the OIP service without and with telemetry.

Rows, measured side by side in one run on the same model and the same request batch:
  torch eager        an equivalent torch module's forward (for scale; not part of the service)
  ort plain          InferenceSession.run in a loop (no HTTP)
  service share=0    the monitor over loopback HTTP, binary tensors, no telemetry
  service share=S    the same with telemetry on a share S of requests (S = 0.1, the default, 1.0)

Each service row starts `fusionguard monitor serve` in a subprocess on a free loopback port and
drives it with `--concurrency` client threads sending a fixed number of requests (bounded, no
traffic leaves 127.0.0.1). Throughput is requests per second; latencies are client-side p50/p99.
Each configuration runs `--rounds` times interleaved and the best-throughput round is kept (the
machine is shared; best-of is the least noisy estimate). Ratios are against `service share=0`.

`--soak` instead runs one server at the default share for `--soak-requests` valid requests and
reports error responses and the server's RSS growth after warm-up against `--rss-bound-mib`.

Run:  nice .venv/bin/python -m benchmarks.monitor            (about 2-4 minutes)
      nice .venv/bin/python -m benchmarks.monitor --soak     (a few minutes)
Writes benchmarks/results/monitor.json (or monitor_soak.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fusionguard import toymodels  # noqa: E402
from fusionguard.monitor.service import ServiceConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SHARE = ServiceConfig.telemetry_share


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_feeds(n: int, dim: int, n_text: int, n_visual: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "query": (rng.standard_normal((n, dim)) / math.sqrt(dim)).astype(np.float32),
        "text_tokens": rng.standard_normal((n, n_text, dim)).astype(np.float32),
        "visual_tokens": rng.standard_normal((n, n_visual, dim)).astype(np.float32),
    }


def binary_body(feeds: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The request tritonclient.http sends by default: JSON header + raw tensors, binary outputs."""
    inputs = [
        {"name": k, "datatype": "FP32", "shape": list(v.shape), "parameters": {"binary_data_size": v.nbytes}}
        for k, v in feeds.items()
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(v.tobytes() for v in feeds.values()), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _stats(latencies: list[float], seconds: float) -> dict[str, float]:
    lat = np.asarray(latencies)
    return {
        "requests": int(lat.size),
        "throughput_rps": lat.size / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def bench_ort(model: Path, feeds, n: int) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for _ in range(20):
        sess.run(None, feeds)
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, feeds)
        lat.append(time.perf_counter() - t)
    return _stats(lat, time.perf_counter() - start)


def bench_torch(feeds, n: int, n_heads: int) -> dict[str, float] | None:
    """An eager torch module computing the same score and attention as the toy fusion model."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    dim, n_text = feeds["query"].shape[1], feeds["text_tokens"].shape[1]
    n_visual = feeds["visual_tokens"].shape[1]

    class Fusion(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.u = torch.nn.Parameter(torch.from_numpy(toymodels.visual_direction(dim)) * math.sqrt(n_visual))
            self.head_scale = torch.arange(n_heads, dtype=torch.float32).view(1, n_heads, 1) / max(n_heads - 1, 1)
            self.bias = torch.zeros(1, 1, n_text + n_visual)

        def forward(self, query, text, visual):
            t = math.sqrt(n_text) * (query * text.mean(1)).sum(1)
            v = visual.mean(1) @ self.u
            keys = torch.cat([text, visual], 1)  # (N, K, D)
            dots = (keys @ query.unsqueeze(2)).transpose(1, 2)  # (N, 1, K)
            attention = torch.softmax(dots * self.head_scale + self.bias, -1)  # (N, H, K)
            return t + v, attention

    module = Fusion().eval()
    args = [torch.from_numpy(feeds[k]) for k in ("query", "text_tokens", "visual_tokens")]
    lat = []
    with torch.inference_mode():
        for _ in range(20):
            module(*args)
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            module(*args)
            lat.append(time.perf_counter() - t)
    return _stats(lat, time.perf_counter() - start)


class Server:
    """`fusionguard monitor serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, share: float, max_concurrency: int = 64) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--model", str(model), "--device", "cpu",
            "--threads", "1", "--telemetry-share", str(share), "--port", str(self.port),
            "--max-concurrency", str(max_concurrency), "--max-body-bytes", str(256 * 1024 * 1024),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def drive(url: str, body: bytes, headers: dict[str, str], n: int, concurrency: int) -> tuple[dict[str, float], dict[int, int]]:
    """Send n requests from `concurrency` threads; (stats of 200s, status code counts)."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    target = url + "/v2/models/ranker/infer"
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=60) as client:

        def worker(count: int) -> None:
            for _ in range(count):
                t = time.perf_counter()
                r = client.post(target, content=body, headers=headers)
                dt = time.perf_counter() - t
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        lat.append(dt)

        for _ in range(min(20, n)):  # warm-up, not counted
            client.post(target, content=body, headers=headers)
        per = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, per))
        seconds = time.perf_counter() - start
    return _stats(lat, seconds), codes


def overhead(args: argparse.Namespace, model: Path, feeds) -> dict:
    body, headers = binary_body(feeds)
    shares = sorted({0.0, 0.1, DEFAULT_SHARE, 1.0})
    rows: dict[str, dict] = {}
    torch_row = bench_torch(feeds, args.requests, args.heads)
    if torch_row is not None:
        rows["torch eager"] = torch_row
    rows["ort plain"] = bench_ort(model, feeds, args.requests)
    best: dict[float, dict] = {}
    for _ in range(args.rounds):
        for share in shares:
            server = Server(model, share)
            try:
                stats, codes = drive(server.url, body, headers, args.requests, args.concurrency)
            finally:
                server.stop()
            stats["status_codes"] = codes
            if share not in best or stats["throughput_rps"] > best[share]["throughput_rps"]:
                best[share] = stats
    for share in shares:
        label = f"service share={share:g}" + (" (default)" if share == DEFAULT_SHARE else "")
        rows[label] = best[share]
    base = best[0.0]["throughput_rps"]
    for row in rows.values():
        row["throughput_vs_service_share0"] = row["throughput_rps"] / base
    return rows


def soak(args: argparse.Namespace, model: Path, feeds) -> dict:
    body, headers = binary_body(feeds)
    server = Server(model, DEFAULT_SHARE)
    try:
        drive(server.url, body, headers, 500, args.concurrency)  # warm-up: allocator and caches settle
        rss_start = server.rss_mib()
        samples, errors, total = [rss_start], 0, 0
        step = 2000
        start = time.perf_counter()
        while total < args.soak_requests:
            n = min(step, args.soak_requests - total)
            _, codes = drive(server.url, body, headers, n, args.concurrency)
            errors += sum(c for code, c in codes.items() if code != 200)
            total += n
            samples.append(server.rss_mib())
        seconds = time.perf_counter() - start
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    growth = samples[-1] - rss_start
    return {
        "requests": total,
        "seconds": seconds,
        "error_responses": errors,
        "rss_start_mib": rss_start,
        "rss_end_mib": samples[-1],
        "rss_max_mib": max(samples),
        "rss_growth_mib": growth,
        "rss_bound_mib": args.rss_bound_mib,
        "rss_samples_mib": samples,
        "within_bound": growth <= args.rss_bound_mib,
        "telemetry_dropped_lines": [line for line in metrics.splitlines() if line.startswith("fusionguard_telemetry_dropped_total")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="timed requests per configuration")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=32, help="rows per request")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="text and visual tokens per candidate")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--soak-requests", type=int, default=20_000)
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = toymodels.save(
            toymodels.build_fusion_model(1.0, dim=args.dim, n_text=args.tokens, n_visual=args.tokens, n_heads=args.heads),
            Path(tmp) / "fusion.onnx",
        )
        feeds = make_feeds(args.candidates, args.dim, args.tokens, args.tokens)
        setup = {
            "candidates_per_request": args.candidates, "dim": args.dim, "tokens": args.tokens, "heads": args.heads,
            "request_bytes": len(binary_body(feeds)[0]), "concurrency": args.concurrency,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, onnxruntime {ort.__version__}",
        }
        if args.soak:
            result = {"setup": setup, "soak": soak(args, model, feeds)}
            s = result["soak"]
            print(f"soak: {s['requests']} requests in {s['seconds']:.0f} s, {s['error_responses']} error responses, "
                  f"RSS {s['rss_start_mib']:.0f} -> {s['rss_end_mib']:.0f} MiB (growth {s['rss_growth_mib']:+.1f} MiB, "
                  f"bound {s['rss_bound_mib']:.0f} MiB: {'ok' if s['within_bound'] else 'EXCEEDED'})")
            out = RESULTS / "monitor_soak.json"
        else:
            rows = overhead(args, model, feeds)
            result = {"setup": setup, "rows": rows}
            print(f"{'configuration':28s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs share=0':>10s}")
            for name, r in rows.items():
                print(f"{name:28s} {r['throughput_rps']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                      f"{r['throughput_vs_service_share0']:10.3f}")
            out = RESULTS / "monitor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
