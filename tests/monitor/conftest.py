"""Fixtures for the monitor tests: toy models with known behaviour, a toy registry, and a real
uvicorn server on a free loopback port (started in a thread, shut down at the end)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fusionguard import toymodels
from fusionguard.registry import file_sha256
from fusionguard.monitor.app import AppConfig, MonitorApp
from fusionguard.monitor.server import ServeConfig, build
from fusionguard.monitor.service import ServiceConfig
from fusionguard.monitor.telemetry import TelemetryConfig


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "fusion": toymodels.save(toymodels.build_fusion_model(1.0), d / "fusion.onnx"),
        "fusion_w0.3": toymodels.save(toymodels.build_fusion_model(0.3), d / "fusion_w03.onnx"),
        "text": toymodels.save(toymodels.build_text_model(), d / "text.onnx"),
        "affine": toymodels.save(toymodels.build_monotone_of_text_model("affine"), d / "affine.onnx"),
    }


@pytest.fixture(scope="session")
def toy():
    return toymodels.make_toy_dataset(n_queries=12, n_candidates=6, seed=3)


def make_registry(root: Path, models: list[Path]) -> Path:
    """A registry in the layout of fusionguard.registry, written by hand (promotion needs a gate report)."""
    for i, model in enumerate(models, start=1):
        vdir = root / "versions" / f"v{i:04d}"
        vdir.mkdir(parents=True)
        (vdir / "model.onnx").write_bytes(model.read_bytes())
        meta = {"sha256": file_sha256(model), "promoted_at": "2026-01-01T00:00:00Z", "source": str(model)}
        (vdir / "meta.json").write_text(json.dumps(meta))
    set_current(root, "v0001")
    return root


def set_current(root: Path, version: str) -> None:
    tmp = root / ".current.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(root / "current")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    app: MonitorApp
    url: str  # http://127.0.0.1:PORT
    host_port: str  # 127.0.0.1:PORT (tritonclient's form)
    server: object  # the uvicorn.Server; set .should_exit = True to start a graceful shutdown
    thread: threading.Thread

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """The parsed /metrics exposition: (sample name, sorted labels) -> value."""
        text = httpx.get(self.url + "/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


@pytest.fixture
def live_server() -> Iterator:
    """Factory: live_server(service_config, app_config=...) -> LiveServer; all stopped at teardown."""
    started = []

    def start(service: ServiceConfig, app: AppConfig = AppConfig(), telemetry: TelemetryConfig = TelemetryConfig()):
        port = free_port()
        app = AppConfig(**{**app.__dict__, "handle_sighup": False})
        mapp, server = build(ServeConfig(service=service, app=app, telemetry=telemetry, port=port, graceful_timeout_s=5))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        started.append((server, thread))
        return LiveServer(mapp, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", server, thread)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(10)


def json_body(feeds: dict[str, np.ndarray]) -> dict:
    return {
        "inputs": [
            {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in feeds.items()
        ]
    }


def rows(batch, start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[start:stop]) for k, v in batch.feeds.items()}
