"""The real server on a free loopback port, driven by tritonclient.http and plain HTTP clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fusionguard.monitor.app import AppConfig
from fusionguard.monitor.service import Sampler, ServiceConfig
from tests.monitor.conftest import free_port, json_body, make_registry, rows, set_current
from tests.monitor.test_app import plain_scores

pytestmark = pytest.mark.integration


def _ok(m, name, **labels):
    return m.get((name, tuple(sorted({"model": "ranker", **labels}.items()))), 0.0)


def test_tritonclient_binary_and_json(live_server, models, toy):
    live = live_server(ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=1.0))
    client = httpclient.InferenceServerClient(live.host_port)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ranker")
        meta = client.get_model_metadata("ranker")
        assert [i["name"] for i in meta["inputs"]] == ["query", "text_tokens", "visual_tokens"]
        sent = []
        for q, binary in enumerate([True, False, True]):
            feeds = rows(toy, 6 * q, 6 * q + 6 - q)  # 6, 5, 4 candidates
            inputs = []
            for name, arr in feeds.items():
                inp = httpclient.InferInput(name, list(arr.shape), "FP32")
                inp.set_data_from_numpy(arr, binary_data=binary)
                inputs.append(inp)
            outputs = None if binary else [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("score", "attention")]
            result = client.infer("ranker", inputs, outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("score"), plain_scores(models["fusion"], feeds), rtol=1e-6)
            assert result.as_numpy("attention").shape == (len(feeds["query"]), 8, 8)
            sent.append(len(feeds["query"]))
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", inputs)
        assert "not served" in err.value.message()
        bad = httpclient.InferInput("query", [2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("ranker", [bad])
        assert err.value.status() == "400"
    finally:
        client.close()
    assert live.app.worker.wait_idle()
    m = live.metrics()
    assert _ok(m, "fusionguard_requests_total", outcome="ok") == 3
    assert _ok(m, "fusionguard_requests_total", outcome="invalid") == 1
    assert _ok(m, "fusionguard_requests_total", model="_unknown", outcome="invalid") == 1
    assert _ok(m, "fusionguard_batch_size_sum") == sum(sent)
    assert _ok(m, "fusionguard_batch_size_count") == 3
    assert _ok(m, "fusionguard_telemetry_requests_total") == 3
    assert _ok(m, "fusionguard_request_duration_seconds_count") == 4
    assert _ok(m, "fusionguard_modality_share_count", version=live.app.service.state.version, modality="visual") == 3
    assert m[("fusionguard_inflight_requests", ())] == 0


def test_concurrent_clients(live_server, models, toy):
    live = live_server(
        ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=0.5, telemetry_seed=0), AppConfig(inference_threads=2)
    )
    per_request = [rows(toy, 6 * (i % 12), 6 * (i % 12) + 1 + i % 6) for i in range(48)]
    expected = [plain_scores(models["fusion"], f) for f in per_request]

    with httpx.Client(base_url=live.url, limits=httpx.Limits(max_connections=8)) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (i, client.post("/v2/models/ranker/infer", json=json_body(per_request[i]))), range(48)))
    for i, r in results:
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32), expected[i], rtol=1e-6)
    assert live.app.worker.wait_idle()
    m = live.metrics()
    assert _ok(m, "fusionguard_requests_total", outcome="ok") == 48
    sampler = Sampler(0.5, seed=0)  # 48 seeded draws: the count does not depend on the arrival order
    assert _ok(m, "fusionguard_telemetry_requests_total") == sum(sampler() for _ in range(48))
    assert _ok(m, "fusionguard_batch_size_sum") == sum(len(f["query"]) for f in per_request)
    assert _ok(m, "fusionguard_inference_duration_seconds_count") == 48


def _blocking_score(live, gate: threading.Event, entered: threading.Event):
    """Scoring blocks until `gate` opens (the app must run it in a worker thread: inline_rows=0)."""
    original = live.app.service.run

    def run(state, feeds, masks):
        entered.set()
        gate.wait(10)
        return original(state, feeds, masks)

    live.app.service.run = run


def test_full_queue_gets_503_and_shutdown_finishes_in_flight(live_server, models, toy):
    live = live_server(ServiceConfig(model=models["fusion"], device="cpu"), AppConfig(max_concurrency=1, inline_rows=0))
    gate, entered = threading.Event(), threading.Event()
    _blocking_score(live, gate, entered)
    body = json_body(rows(toy, 0, 4))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, live.url + "/v2/models/ranker/infer", json=body, timeout=20)
        assert entered.wait(10)
        second = httpx.post(live.url + "/v2/models/ranker/infer", json=body)
        assert second.status_code == 503 and "busy" in second.json()["error"]
        m = live.metrics()
        assert _ok(m, "fusionguard_requests_total", outcome="rejected") == 1
        assert m[("fusionguard_inflight_requests", ())] == 1
        # Ask the server to stop while the first request is in flight: it must still be answered.
        live.server.should_exit = True
        time.sleep(0.3)
        assert live.thread.is_alive()  # still waiting for the request in flight
        gate.set()
        assert first.result().status_code == 200
    live.thread.join(10)
    assert not live.thread.is_alive()


def test_hot_reload_drops_no_request(live_server, models, toy, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    live = live_server(ServiceConfig(registry=root, device="cpu", telemetry_share=0.2), AppConfig(inference_threads=2))
    body = json_body(rows(toy, 0, 6))
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def hammer():
        with httpx.Client(base_url=live.url) as c:
            while not stop.is_set():
                r = c.post("/v2/models/ranker/infer", json=body)
                seen.append((r.status_code, r.json().get("model_version", r.text)))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 20
        while len(seen) < n:
            assert time.monotonic() < deadline, "the clients got no answers"
            time.sleep(0.02)

    wait_for(3)
    set_current(root, "v0002")
    r = httpx.post(live.url + "/v2/repository/models/ranker/load", timeout=20)
    assert r.json()["version"] == "v0002"
    n_at_swap = len(seen)
    wait_for(n_at_swap + 6)
    stop.set()
    for t in threads:
        t.join(10)
    assert all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert "v0001" in versions and versions[-1] == "v0002" and len(seen) > n_at_swap
    m = live.metrics()
    info = [k for k in m if k[0] == "fusionguard_model_info"]
    assert len(info) == 1 and ("version", "v0002") in info[0][1]
    assert _ok(m, "fusionguard_requests_total", outcome="ok") == len(seen)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX")
def test_cli_serve_sighup_reload_and_sigterm(models, toy, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--registry", str(root), "--port", str(port),
         "--device", "cpu", "--graceful-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    body = json_body(rows(toy, 0, 3))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.poll() is not None else "timeout"
            time.sleep(0.1)
        assert httpx.post(url + "/v2/models/ranker/infer", json=body).json()["model_version"] == "v0001"
        set_current(root, "v0002")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while httpx.post(url + "/v2/models/ranker/infer", json=body).json()["model_version"] != "v0002":
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        # uvicorn shuts down gracefully, then re-raises the captured SIGTERM with the default handler.
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_large_body_reaches_the_app_in_one_receive():
    """The server's uvicorn protocol buffers a body up to BODY_HIGH_WATER before pausing the
    connection, so a 270 KB request arrives in one receive() (uvicorn's own: two, paused at 64 KiB)."""
    import uvicorn

    from fusionguard.monitor.server import BODY_HIGH_WATER, ServeConfig, _uvicorn_config

    receives: list[int] = []

    async def probe(scope, receive, send):
        if scope["type"] != "http":
            return
        # let the whole body arrive first: what is then measured is whether the protocol paused
        # reading at its high-water mark (the body comes in parts) or buffered it all (one part),
        # not how soon the scheduler woke this task
        await asyncio.sleep(0.2)
        n = 0
        while True:
            message = await receive()
            n += 1
            if not message.get("more_body"):
                break
        receives.append(n)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = _uvicorn_config(ServeConfig(service=ServiceConfig(model=None), port=port), probe)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        body = bytes(270_000)
        assert len(body) < BODY_HIGH_WATER
        with httpx.Client() as client:
            for _ in range(20):
                assert client.post(f"http://127.0.0.1:{port}/", content=body).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
    assert receives == [1] * 20, receives
