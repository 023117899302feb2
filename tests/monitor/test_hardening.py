"""The monitor under hostile or broken clients and models: slow and abandoned uploads, a body
reader cap, non-finite model outputs, absurd shapes and nesting, compressed bombs, and error
answers that are always JSON (issue 11, monitor part)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import socket
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from fusionguard.monitor.app import AppConfig
from fusionguard.monitor.protocol import HEADER_LENGTH
from fusionguard.monitor.service import ServiceConfig
from tests.monitor.conftest import json_body, make_registry, rows, set_current
from tests.monitor.test_app import make_app, plain_scores

OK = {"model": "ranker"}


def _outcome(registry, outcome: str, model: str = "ranker") -> float:
    return registry.get_sample_value("fusionguard_requests_total", {"model": model, "outcome": outcome})


def _slow_upload(url: str, declared: int = 100_000, sent: bytes = b'{"inputs": [') -> socket.socket:
    """A client that announces a body of `declared` bytes and sends only `sent` (then waits)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        "POST /v2/models/ranker/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


@pytest.mark.integration
def test_slow_uploads_hold_no_inference_slot_and_time_out_408(live_server, models, toy, caplog):
    # One inference slot and 8 clients trickling their bodies: valid requests are still served,
    # and every slow one is answered 408 once its body timeout is spent.
    caplog.set_level(logging.DEBUG)
    live = live_server(ServiceConfig(model=models["fusion"], device="cpu"), AppConfig(max_concurrency=1, body_timeout_s=1.5))
    slow = [_slow_upload(live.url) for _ in range(8)]
    start = time.monotonic()
    try:
        with httpx.Client(base_url=live.url) as client:
            for q in range(4):
                r = client.post("/v2/models/ranker/infer", json=json_body(rows(toy, 6 * q, 6 * q + 6)))
                assert r.status_code == 200, r.text
        answered_while_slow = time.monotonic() - start
        answers = [_read_response(s) for s in slow]
    finally:
        for s in slow:
            s.close()
    assert answered_while_slow < 1.5  # served while the uploads were still trickling
    assert all(status == 408 and "did not arrive" in doc["error"] for status, doc in answers), answers
    m = live.metrics()
    get = lambda outcome: m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", outcome)))]  # noqa: E731
    assert (get("ok"), get("timeout"), get("rejected")) == (4, 8, 0)
    _no_tracebacks(caplog)


@pytest.mark.integration
def test_body_reader_cap_and_client_disconnects(live_server, models, toy, caplog):
    caplog.set_level(logging.DEBUG)
    live = live_server(ServiceConfig(model=models["fusion"], device="cpu"), AppConfig(max_body_readers=2, body_timeout_s=20))
    body = json_body(rows(toy, 0, 4))
    slow = [_slow_upload(live.url) for _ in range(2)]
    _wait_for(lambda: live.app._reading == 2)
    r = httpx.post(live.url + "/v2/models/ranker/infer", json=body)
    assert r.status_code == 503 and "bodies arriving" in r.json()["error"]
    for s in slow:  # hang up mid-body
        s.close()
    key = ("fusionguard_requests_total", (("model", "ranker"), ("outcome", "disconnected")))
    _wait_for(lambda: live.metrics().get(key) == 2)
    assert httpx.post(live.url + "/v2/models/ranker/infer", json=body).status_code == 200
    m = live.metrics()
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "rejected")))] == 1
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "error")))] == 0
    assert m[("fusionguard_inflight_requests", ())] == 0
    _no_tracebacks(caplog)


def test_non_finite_model_output_is_500_with_a_reason(models, toy):
    # Finite but huge visual tokens overflow inside the real fusion model: its scores are NaN.
    mapp, registry = make_app(model=models["fusion"])
    feeds = rows(toy, 0, 3)
    feeds["visual_tokens"] = np.full_like(feeds["visual_tokens"], 3e38)
    with TestClient(mapp.app) as c:
        r = c.post("/v2/models/ranker/infer", json=json_body(feeds))
        assert r.status_code == 500
        assert "non-finite" in r.json()["error"] and "score" in r.json()["error"]
        assert "NaN" not in r.text.replace("(NaN", "")  # the body is plain JSON, no NaN literal
        assert c.post("/v2/models/ranker/infer", json=json_body(rows(toy, 0, 3))).status_code == 200
    assert registry.get_sample_value("fusionguard_request_errors_total", {**OK, "reason": "non_finite_output"}) == 1
    assert _outcome(registry, "error") == 1
    assert _outcome(registry, "ok") == 1


def _json_with_shape(shape, data) -> bytes:
    return json.dumps({"inputs": [{"name": "query", "datatype": "FP32", "shape": shape, "data": data}]}).encode()


def _binary_with_shape(shape) -> tuple[bytes, dict]:
    header = json.dumps(
        {"inputs": [{"name": "query", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 0}}]}
    ).encode()
    return header, {HEADER_LENGTH: str(len(header))}


def _hostile_cases():
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_data = b'{"inputs": [{"name": "query", "datatype": "FP32", "shape": [1], "data": ' + deep + b"}]}"
    bomb = gzip.compress(b" " * 2_000_000)  # 2 MB of whitespace, ~2 kB on the wire
    return [
        ("zero-size huge shape", {"content": _json_with_shape([0, 10**30], [])}, 400, "wrong_shape"),
        ("huge shape, binary", dict(zip(("content", "headers"), _binary_with_shape([0, 10**30]))), 400, "wrong_shape"),
        ("40 dimensions", {"content": _json_with_shape([1] * 40, [1.0])}, 400, "wrong_shape"),
        ("negative dimension", {"content": _json_with_shape([-1, 4], [])}, 400, "malformed_json"),
        ("deep nesting", {"content": deep}, 400, "malformed_json"),
        ("deep nesting in data", {"content": deep_data}, 400, "malformed_json"),
        ("gzip bomb", {"content": bomb, "headers": {"content-encoding": "gzip"}}, 413, "body_too_large"),
        ("broken gzip", {"content": b"\x1f\x8b nope", "headers": {"content-encoding": "gzip"}}, 400, "malformed_encoding"),
        ("unknown encoding", {"content": b"{}", "headers": {"content-encoding": "br"}}, 415, "unsupported_encoding"),
    ]


def test_hostile_bodies_are_4xx_json_with_a_counted_reason(models):
    mapp, registry = make_app(AppConfig(max_body_bytes=1_000_000, handle_sighup=False), model=models["fusion"])
    cases = _hostile_cases()
    with TestClient(mapp.app, raise_server_exceptions=True) as c:
        for name, kwargs, status, reason in cases:
            r = c.post("/v2/models/ranker/infer", **kwargs)
            assert r.status_code == status, (name, r.text[:200])
            assert r.headers["content-type"] == "application/json" and r.json()["error"], name
            assert registry.get_sample_value("fusionguard_invalid_requests_total", {**OK, "reason": reason}) >= 1, name
    assert _outcome(registry, "invalid") == len(cases)
    assert _outcome(registry, "error") == 0


def test_every_error_answer_is_json(models, toy, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"]])
    mapp, _ = make_app(registry=root)
    with TestClient(mapp.app, raise_server_exceptions=False) as c:
        (root / "current").write_bytes(b"\xff\xfe\x00 not utf-8\n")  # a damaged registry
        answers = {
            "reload on a non-UTF-8 current": c.post("/v2/repository/models/ranker/load"),
            "unknown path": c.get("/v2/nothing"),
            "wrong method": c.get("/v2/models/ranker/infer"),
            "unknown model": c.get("/v2/models/other"),
            "load an unknown model": c.post("/v2/repository/models/other/load"),
            "load with a config": c.post("/v2/repository/models/ranker/load", json={"parameters": {"config": "{}"}}),
            "repository call with a broken body": c.post("/v2/repository/index", content=b"{nope"),
            "infer on a version not served": c.post("/v2/models/ranker/versions/v9/infer", json=json_body(rows(toy, 0, 2))),
        }
        for what, r in answers.items():
            assert r.status_code >= 400, what
            assert r.headers["content-type"] == "application/json", (what, r.headers["content-type"])
            assert isinstance(r.json()["error"], str) and r.json()["error"], what
        assert answers["reload on a non-UTF-8 current"].status_code == 500
        assert "still serving version 'v0001'" in answers["reload on a non-UTF-8 current"].json()["error"]
        assert c.post("/v2/models/ranker/infer", json=json_body(rows(toy, 0, 2))).status_code == 200


def test_an_escaped_bug_is_still_a_json_500(models):
    mapp, _ = make_app(model=models["fusion"])

    async def broken(request):
        raise RuntimeError("a bug")

    mapp.app.router.routes.append(Route("/boom", broken))
    with TestClient(mapp.app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500 and r.json() == {"error": "internal error: RuntimeError: a bug"}


_CORRUPTIONS = st.sampled_from(["current", "meta", "model", "remove_model", "remove_version"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(what=_CORRUPTIONS, junk=st.binary(max_size=64), version=st.sampled_from(["v0001", "v0002"]))
def test_random_registry_corruption_never_breaks_serving(models, toy, tmp_path_factory, what, junk, version):
    """Corrupt the registry under a running server and reload: the answer is JSON, the server keeps
    serving a model that scores exactly like its file, and never a corrupt one."""
    root = make_registry(tmp_path_factory.mktemp("reg"), [models["fusion"], models["fusion_w0.3"]])
    mapp, _ = make_app(registry=root)
    vdir = root / "versions" / version
    if what == "current":
        (root / "current").write_bytes(junk)
    elif what == "meta":
        (vdir / "meta.json").write_bytes(junk)
    elif what == "model":
        (vdir / "model.onnx").write_bytes(junk)
    elif what == "remove_model":
        (vdir / "model.onnx").unlink()
    else:
        shutil.rmtree(vdir)
    if what != "current":
        set_current(root, version)
    feeds = rows(toy, 0, 4)
    with TestClient(mapp.app, raise_server_exceptions=False) as c:
        r = c.post("/v2/repository/models/ranker/load")
        assert r.headers["content-type"] == "application/json"
        assert r.status_code in (200, 500, 503), r.text
        assert "error" in r.json() or r.json()["version"] == mapp.service.state.version
        served = c.post("/v2/models/ranker/infer", json=json_body(feeds))
        assert served.status_code == 200, served.text
        promoted = {"v0001": models["fusion"], "v0002": models["fusion_w0.3"]}[served.json()["model_version"]]
        got = np.array(served.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, plain_scores(promoted, feeds), rtol=1e-6)
