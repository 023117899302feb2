"""`--workers N`: processes sharing the port; /metrics merges every worker (prometheus_client's
multiprocess mode); SIGHUP, the load and the unload endpoints reach every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.conftest import free_port, json_body, make_registry, rows, set_current

pytestmark = pytest.mark.integration


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _ok_per_worker(prom_dir: Path) -> dict[str, float]:
    """fusionguard_requests_total{outcome="ok"} as each worker's own file holds it."""
    per = {}
    for f in prom_dir.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(f)):
            name, sample, labels, _ = json.loads(key)
            if sample == "fusionguard_requests_total" and labels.get("outcome") == "ok":
                per[f.stem] = per.get(f.stem, 0.0) + value
    return per


def _wait(what: str, ok, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _info(m: dict, version: str) -> float:
    return sum(v for (name, labels), v in m.items() if name == "fusionguard_model_info" and ("version", version) in labels)


def test_workers_share_the_port_merge_metrics_and_all_reload(models, toy, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    prom = tmp_path / "prom"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--registry", str(root), "--workers", "2",
         "--port", str(port), "--device", "cpu", "--threads", "1", "--telemetry-share", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    body = json_body(rows(toy, 0, 6))

    def post(_: object = None) -> httpx.Response:
        return httpx.post(url + "/v2/models/ranker/infer", json=body, timeout=30)  # a new connection each

    def ready() -> bool:
        try:
            return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            return False

    try:
        _wait("the workers to start", lambda: ready() and len(list(prom.glob("gauge_livemin_*.db"))) == 2)

        # 1. Counters sum over the workers (both of which served some of the requests).
        sent = 80
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(sent)))
        assert [r.status_code for r in answers] == [200] * sent
        per_worker = _ok_per_worker(prom)
        m = _metrics(url)
        assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == sent
        assert sum(per_worker.values()) == sent
        assert len([v for v in per_worker.values() if v > 0]) == 2, per_worker
        assert m[("fusionguard_batch_size_sum", (("model", "ranker"),))] == 6 * sent
        assert m[("fusionguard_model_ready", (("model", "ranker"),))] == 1  # livemin over the workers
        assert m[("fusionguard_inflight_requests", ())] == 0  # livesum
        assert not any(name.startswith("process_") for name, _ in m)  # per-process collectors left out

        # 2. SIGHUP to the supervisor reloads every worker.
        set_current(root, "v0002")
        proc.send_signal(signal.SIGHUP)
        _wait("every worker to serve v0002", lambda: (lambda m: _info(m, "v0002") == 1 and _info(m, "v0001") == 0)(_metrics(url)))
        with ThreadPoolExecutor(8) as pool:
            assert {r.json()["model_version"] for r in pool.map(post, range(24))} == {"v0002"}

        # 3. The load endpoint, answered by one worker, reaches the other as well.
        set_current(root, "v0001")
        r = httpx.post(url + "/v2/repository/models/ranker/load", timeout=30)
        assert r.status_code == 200 and r.json()["version"] == "v0001"
        _wait("every worker to serve v0001", lambda: (lambda m: _info(m, "v0001") == 1 and _info(m, "v0002") == 0)(_metrics(url)))
        with ThreadPoolExecutor(8) as pool:
            assert {r.json()["model_version"] for r in pool.map(post, range(24))} == {"v0001"}

        # 4. Unload reaches every worker: not ready anywhere.
        assert httpx.post(url + "/v2/repository/models/ranker/unload", timeout=30).status_code == 200
        # model_info is livemax: 0 once no worker serves v0001 any more (model_ready, livemin, is 0 at the first)
        _wait("every worker to unload", lambda: _info(_metrics(url), "v0001") == 0)
        assert _metrics(url)[("fusionguard_model_ready", (("model", "ranker"),))] == 0
        assert {httpx.get(url + "/v2/health/ready", timeout=5).status_code for _ in range(12)} == {503}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]


def test_workers_fail_fast_on_a_bad_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = subprocess.run(
        [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--model", str(bad), "--workers", "2",
         "--port", str(free_port())],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 2 and b"Traceback" not in r.stderr and b"bad.onnx" in r.stderr
