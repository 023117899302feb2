"""Readiness that means ready: not-ready until a model is loaded, an empty registry that starts
and becomes ready after a promotion plus a reload (load endpoint, registry poll, SIGHUP), unload,
and the served CLI's logs (issue 16, deliverables 4 and 6)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from starlette.testclient import TestClient

from fusionguard.monitor.app import AppConfig
from tests.monitor.conftest import free_port, json_body, make_registry, rows, set_current
from tests.monitor.test_app import make_app

NOT_READY_URLS = ("/v2/health/ready", "/v2/models/ranker/ready", "/v2/models/ranker")


def _ready_gauge(registry) -> float:
    return registry.get_sample_value("fusionguard_model_ready", {"model": "ranker"})


def _assert_not_ready(c: TestClient, registry) -> None:
    for url in NOT_READY_URLS:
        r = c.get(url)
        assert r.status_code == 503, url
        assert "not loaded" in r.json()["error"] and r.json()["ready"] is False, url
    assert c.get("/v2/health/live").status_code == 200
    assert _ready_gauge(registry) == 0


def test_empty_registry_starts_not_ready_then_load_and_unload(models, toy, tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    mapp, registry = make_app(registry=root)
    body = json_body(rows(toy, 0, 4))
    with TestClient(mapp.app) as c:
        _assert_not_ready(c, registry)
        r = c.post("/v2/models/ranker/infer", json=body)
        assert r.status_code == 503 and "not loaded" in r.json()["error"]
        assert c.post("/v2/repository/index").json() == [
            {"name": "ranker", "version": "", "state": "UNAVAILABLE", "reason": "no current model in the registry"}
        ]
        r = c.post("/v2/repository/models/ranker/load")  # nothing promoted yet
        assert r.status_code == 503 and "not loaded" in r.json()["error"]

        make_registry(root, [models["fusion"], models["fusion_w0.3"]])  # a promotion
        assert c.get("/v2/health/ready").status_code == 503  # not before a reload
        assert c.post("/v2/repository/models/ranker/load").json() == {"name": "ranker", "version": "v0001", "changed": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/models/ranker/ready").json() == {"name": "ranker", "ready": True}
        assert c.post("/v2/models/ranker/infer", json=body).json()["model_version"] == "v0001"
        assert _ready_gauge(registry) == 1
        assert c.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"

        assert c.post("/v2/repository/models/ranker/unload", json={"parameters": {"unload_dependents": False}}).json() == {
            "name": "ranker", "unloaded": "v0001"
        }
        _assert_not_ready(c, registry)
        assert c.post("/v2/repository/index", json={"ready": True}).json() == []
        assert c.post("/v2/repository/index").json()[0]["reason"] == "unloaded"
        assert c.post("/v2/models/ranker/infer", json=body).status_code == 503
        set_current(root, "v0002")
        assert c.post("/v2/repository/models/ranker/load").json()["version"] == "v0002"
        assert c.get("/v2/health/ready").status_code == 200
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "unavailable"}) == 2
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "ok"}) == 1
    info = [s.labels["version"] for fam in registry.collect() if fam.name == "fusionguard_model_info" for s in fam.samples]
    assert info == ["v0002"]


def test_registry_poll_makes_the_server_ready(models, toy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fusionguard.monitor")
    root = tmp_path / "reg"
    root.mkdir()
    mapp, registry = make_app(AppConfig(handle_sighup=False, registry_poll_s=0.05), registry=root)

    def wait_ready(version: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            state = mapp.service.state
            if state is not None and state.version == version:
                return
            assert time.monotonic() < deadline, f"the poll did not load {version}"
            time.sleep(0.05)

    with TestClient(mapp.app) as c:
        assert c.get("/v2/health/ready").status_code == 503
        make_registry(root, [models["fusion"], models["fusion_w0.3"]])
        wait_ready("v0001")
        assert c.get("/v2/health/ready").status_code == 200
        set_current(root, "v0002")
        wait_ready("v0002")
        assert c.post("/v2/models/ranker/infer", json=json_body(rows(toy, 0, 3))).json()["model_version"] == "v0002"
        assert _ready_gauge(registry) == 1
        # A broken registry: the poll keeps the model serving and logs the failure once, not every tick.
        set_current(root, "v0009")
        time.sleep(0.5)  # about ten ticks
        failures = [r for r in caplog.records if "registry poll reload failed" in r.getMessage()]
        assert len(failures) == 1 and "still serving version 'v0002'" in failures[0].getMessage()
        assert not failures[0].exc_info  # a FusionGuardError: a message, no traceback
        assert c.get("/v2/health/ready").status_code == 200
        set_current(root, "v0001")
        wait_ready("v0001")
        deadline = time.monotonic() + 5  # the line follows the swap
        while not any("reload works again" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the poll did not log its recovery"
            time.sleep(0.05)
        # An explicit unload stays unloaded: the poll does not undo an operator's decision.
        c.post("/v2/repository/models/ranker/unload")
        time.sleep(0.3)
        assert c.get("/v2/health/ready").status_code == 503


def test_missing_registry_directory_is_a_startup_error(tmp_path):
    from fusionguard.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="not a directory"):
        make_app(registry=tmp_path / "typo")


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@pytest.mark.integration
@pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX")
def test_cli_serve_on_an_empty_registry_becomes_ready_after_promotion_and_sighup(models, toy, tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionguard.cli", "monitor", "serve", "--registry", str(root), "--port", str(port),
         "--device", "cpu", "--graceful-timeout", "5", "--access-log", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        r = httpx.get(url + "/v2/health/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        make_registry(root, [models["fusion"]])
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while httpx.get(url + "/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "SIGHUP did not make the server ready"
            time.sleep(0.1)
        assert httpx.post(url + "/v2/models/ranker/infer", json=json_body(rows(toy, 0, 3))).json()["model_version"] == "v0001"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.decode().splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), [x for x in lines if not LOG_LINE.match(x)][:5]
    assert any(re.search(r" INFO fusionguard\.monitor\.server: serving 'ranker' on .*no model loaded yet, not ready", x) for x in lines)
    assert any(" INFO fusionguard.monitor.app: SIGHUP reload: now serving version v0001" in x for x in lines)
    assert any(re.search(r' INFO uvicorn\.access: .*"GET /v2/health/ready HTTP/1\.1" 503', x) for x in lines)
    assert any(re.search(r' INFO uvicorn\.access: .*"POST /v2/models/ranker/infer HTTP/1\.1" 200', x) for x in lines)
