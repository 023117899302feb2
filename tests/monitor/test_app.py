"""In-process tests of the Starlette app (fast cases): health, metadata, validation reasons,
telemetry values against a plain reference, shadow correlation, drift and hot reload."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from fusionguard.profile import build_profile, feature_summaries
from fusionguard.monitor.app import AppConfig, MonitorApp
from fusionguard.monitor.protocol import HEADER_LENGTH
from fusionguard.monitor.service import ModelService, Sampler, ServiceConfig
from tests.monitor.conftest import json_body, make_registry, rows, set_current


def make_app(app_config: AppConfig = AppConfig(handle_sighup=False), **service) -> tuple[MonitorApp, CollectorRegistry]:
    registry = CollectorRegistry()
    svc = ModelService(ServiceConfig(device="cpu", **service))
    return MonitorApp(svc, registry, config=app_config), registry


@functools.lru_cache(maxsize=8)
def _session(model_path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def plain_scores(model_path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Scores from a plain ONNX Runtime session (the reference for the service's answers)."""
    sess = _session(model_path)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["score"], {k: feeds[k] for k in names})[0]


def reference_visual_share(model_path, feeds) -> float:
    """Mean over candidates of |phi_v| / (|phi_t| + |phi_v|), four plain sessions runs with zeroed inputs."""
    def masked(text: bool, visual: bool):
        f = dict(feeds)
        if text:
            f["query"] = np.zeros_like(f["query"])
            f["text_tokens"] = np.zeros_like(f["text_tokens"])
        if visual:
            f["visual_tokens"] = np.zeros_like(f["visual_tokens"])
        return plain_scores(model_path, f).astype(np.float64)

    tv, t, v, none = masked(False, False), masked(False, True), masked(True, False), masked(True, True)
    shares = []
    for i in range(tv.shape[0]):
        phi_v = 0.5 * ((tv[i] - t[i]) + (v[i] - none[i]))
        phi_t = 0.5 * ((tv[i] - v[i]) + (t[i] - none[i]))
        if abs(phi_t) + abs(phi_v) > 0:
            shares.append(abs(phi_v) / (abs(phi_t) + abs(phi_v)))
    return float(np.mean(shares))


def test_health_and_metadata(models):
    mapp, _ = make_app(model=models["fusion"])
    with TestClient(mapp.app) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").status_code == 200
        assert "binary_tensor_data" in c.get("/v2").json()["extensions"]
        meta = c.get("/v2/models/ranker").json()
        assert [i["name"] for i in meta["inputs"]] == ["query", "text_tokens", "visual_tokens"]
        assert meta["inputs"][1] == {"name": "text_tokens", "datatype": "FP32", "shape": [-1, 4, 16]}
        assert meta["outputs"][1]["shape"] == [-1, 8, 8]
        assert meta["versions"] == [mapp.service.state.version]
        assert c.get("/v2/models/ranker/ready").json()["ready"] is True
        assert c.get(f"/v2/models/ranker/versions/{meta['versions'][0]}").status_code == 200
        for url in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/ranker/versions/nope"):
            r = c.get(url)
            assert r.status_code == 404 and "ranker" in r.json()["error"]
        assert c.get("/v2/nothing").json()["error"].startswith("GET /v2/nothing")
        r = c.get("/v2/models/ranker/infer")
        assert r.status_code == 405 and "error" in r.json()


def _binary_request(feeds: dict[str, np.ndarray], header_patch=None, trailing=b""):
    inputs = [
        {"name": k, "datatype": "FP32", "shape": list(v.shape), "parameters": {"binary_data_size": v.nbytes}}
        for k, v in feeds.items()
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(v.tobytes() for v in feeds.values()) + trailing
    return body, {HEADER_LENGTH: str(header_patch if header_patch is not None else len(header))}


def test_binary_and_json_scores_match_plain_session(models, toy):
    mapp, registry = make_app(model=models["fusion"], telemetry_share=0.0)
    feeds = rows(toy, 0, 6)
    expected = plain_scores(models["fusion"], feeds)
    with TestClient(mapp.app) as c:
        r = c.post("/v2/models/ranker/infer", json=json_body(feeds))
        assert r.status_code == 200
        out = {o["name"]: o for o in r.json()["outputs"]}
        np.testing.assert_allclose(np.array(out["score"]["data"], np.float32), expected, rtol=1e-6)
        assert out["attention"]["shape"] == [6, 8, 8]
        body, headers = _binary_request(feeds)
        r = c.post("/v2/models/ranker/infer", content=body, headers=headers)
        n = int(r.headers[HEADER_LENGTH])
        doc = json.loads(r.content[:n])
        size = doc["outputs"][0]["parameters"]["binary_data_size"]
        np.testing.assert_array_equal(np.frombuffer(r.content[n : n + size], np.float32), expected)
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "ok"}) == 2
    assert registry.get_sample_value("fusionguard_batch_size_sum", {"model": "ranker"}) == 12
    assert registry.get_sample_value("fusionguard_telemetry_requests_total", {"model": "ranker"}) == 0  # initialised, never sampled


def _bad_requests(feeds):
    f = dict(feeds)
    nan = dict(feeds, query=feeds["query"].copy())
    nan["query"][1, 2] = np.nan
    inf = dict(feeds, visual_tokens=feeds["visual_tokens"].copy())
    inf["visual_tokens"][0, 0, 0] = np.inf
    missing = {k: v for k, v in f.items() if k != "visual_tokens"}
    extra = dict(f, extra=np.zeros((3, 2), np.float32))
    shape = dict(f, text_tokens=f["text_tokens"][:, :3])
    rows_ = dict(f, query=f["query"][:2])
    fp64 = json_body(f)
    fp64["inputs"][0]["datatype"] = "FP64"
    bin_ok, bin_headers = _binary_request(f)
    return [
        ("missing tensor", {"json": json_body(missing)}, 400, "missing_input"),
        ("extra tensor", {"json": json_body(extra)}, 400, "unexpected_input"),
        ("wrong shape", {"json": json_body(shape)}, 400, "wrong_shape"),
        ("row mismatch", {"json": json_body(rows_)}, 400, "row_mismatch"),
        ("wrong datatype", {"json": fp64}, 400, "wrong_dtype"),
        ("nan", {"content": json.dumps(json_body(nan)).encode()}, 400, "non_finite"),
        ("inf binary", dict(zip(("content", "headers"), _binary_request(inf))), 400, "non_finite"),
        ("malformed json", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, 400, "malformed_json"),
        ("malformed binary header", {"content": bin_ok, "headers": {HEADER_LENGTH: "nope"}}, 400, "malformed_binary"),
        ("binary trailing bytes", dict(zip(("content", "headers"), _binary_request(f, trailing=b"xx"))), 400, "malformed_binary"),
        ("header beyond body", {"content": bin_ok, "headers": {HEADER_LENGTH: str(len(bin_ok) + 1)}}, 400, "malformed_binary"),
        ("body too large", {"content": b"x" * 70_000}, 413, "body_too_large"),
    ]


def test_bad_inputs_are_400_with_counted_reason(models, toy):
    mapp, registry = make_app(AppConfig(max_body_bytes=64_000, handle_sighup=False), model=models["fusion"])
    feeds = rows(toy, 0, 3)
    cases = _bad_requests(feeds)
    with TestClient(mapp.app) as c:
        for name, kwargs, status, reason in cases:
            r = c.post("/v2/models/ranker/infer", **kwargs)
            assert r.status_code == status, (name, r.text)
            assert r.json()["error"], name
            assert registry.get_sample_value(
                "fusionguard_invalid_requests_total", {"model": "ranker", "reason": reason}
            ) >= 1, name
        r = c.post("/v2/models/nope/infer", json=json_body(feeds))
        assert r.status_code == 404
        ok = c.post("/v2/models/ranker/infer", json=json_body(feeds))  # still serving
        assert ok.status_code == 200
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "invalid"}) == len(cases)
    assert registry.get_sample_value("fusionguard_invalid_requests_total", {"model": "_unknown", "reason": "unknown_model"}) == 1
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "ok"}) == 1
    assert registry.get_sample_value("fusionguard_inflight_requests") == 0


@pytest.mark.parametrize("weight", ["fusion", "fusion_w0.3"])
def test_modality_share_matches_plain_shapley(models, toy, weight):
    mapp, registry = make_app(model=models[weight], telemetry_share=1.0)
    version = mapp.service.state.version
    expected = []
    with TestClient(mapp.app) as c:
        for q in range(4):
            feeds = rows(toy, 6 * q, 6 * q + 6)
            assert c.post("/v2/models/ranker/infer", json=json_body(feeds)).status_code == 200
            expected.append(reference_visual_share(models[weight], feeds))
        assert mapp.worker.wait_idle()
    labels = {"model": "ranker", "version": version}
    assert registry.get_sample_value("fusionguard_telemetry_requests_total", {"model": "ranker"}) == 4
    assert registry.get_sample_value("fusionguard_modality_share_count", {**labels, "modality": "visual"}) == 4
    got = registry.get_sample_value("fusionguard_modality_share_sum", {**labels, "modality": "visual"})
    assert got == pytest.approx(sum(expected), rel=1e-4)
    text = registry.get_sample_value("fusionguard_modality_share_sum", {**labels, "modality": "text"})
    assert text == pytest.approx(4 - sum(expected), rel=1e-4)
    assert registry.get_sample_value("fusionguard_visual_attention_mass_count", labels) == 4
    assert 0 < registry.get_sample_value("fusionguard_attention_entropy_sum", labels) <= 4


def test_sampling_is_random_per_request_and_reproducible_with_a_seed():
    a, b = Sampler(0.25, seed=7), Sampler(0.25, seed=7)
    first, second = [a() for _ in range(4000)], [b() for _ in range(4000)]
    assert first == second  # same seed, same decisions
    other = Sampler(0.25, seed=8)
    assert first != [other() for _ in range(4000)]
    assert abs(sum(first) / 4000 - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5  # Bernoulli(0.25) within 4 sd
    # No period: a client cycling through 4 queries gets every query sampled (every 4th-request
    # sampling would sample one query only).
    sampled_queries = {i % 4 for i, hit in enumerate(first) if hit}
    assert sampled_queries == {0, 1, 2, 3}
    assert sum(Sampler(0.0, seed=1)() for _ in range(10)) == 0
    assert all(Sampler(1.0, seed=1)() for _ in range(10))


@pytest.mark.parametrize("served, low, high", [("affine", 1.0, 1.0), ("fusion", -1.0, 0.99)])
def test_shadow_spearman(models, toy, served, low, high):
    mapp, registry = make_app(model=models[served], shadow=models["text"], telemetry_share=1.0)
    with TestClient(mapp.app) as c:
        for q in range(3):
            assert c.post("/v2/models/ranker/infer", json=json_body(rows(toy, 6 * q, 6 * q + 6))).status_code == 200
        assert mapp.worker.wait_idle()
    assert registry.get_sample_value("fusionguard_shadow_spearman_per_request_count", {"model": "ranker"}) == 3
    rho = registry.get_sample_value("fusionguard_shadow_spearman", {"model": "ranker"})
    assert low <= rho <= high


def test_drift_gauges_against_profile(models, toy, tmp_path):
    # A profile built from the same toy traffic the test sends (one request per query): PSI 0;
    # the same requests with scaled visual tokens: large.
    mapp0, _ = make_app(model=models["fusion"])
    scorer = mapp0.service.state.scorer
    passes = mapp0.service.passes
    share = passes.values(dict(zip(passes.masks, (o.score for o in scorer.run(toy.feeds, passes.masks)))))[2]
    profile = build_profile(
        scorer.sha256, share, feature_summaries(toy.feeds), requests=toy.query_id, shapley_strategy=passes.strategy
    )
    path = profile.write(tmp_path / "profile.json")
    mapp, registry = make_app(model=models["fusion"], profile=path, telemetry_share=1.0)
    mapp.worker.config = type(mapp.worker.config)(drift_window=12, drift_every=1)
    with TestClient(mapp.app) as c:
        for q in range(12):
            feeds = rows(toy, 6 * q, 6 * q + 6)
            assert c.post("/v2/models/ranker/infer", json=json_body(feeds)).status_code == 200
        assert mapp.worker.wait_idle()
        same = registry.get_sample_value("fusionguard_drift_psi", {"model": "ranker", "feature": "visual_tokens"})
        assert same == pytest.approx(0.0, abs=1e-6)  # the window is exactly the reference set
        assert registry.get_sample_value("fusionguard_drift_pvalue", {"model": "ranker", "feature": "visual_share"}) > 0.5
        for q in range(12):
            feeds = rows(toy, 6 * q, 6 * q + 6)
            feeds["visual_tokens"] = feeds["visual_tokens"] * 3
            assert c.post("/v2/models/ranker/infer", json=json_body(feeds)).status_code == 200
        assert mapp.worker.wait_idle()
    shifted = registry.get_sample_value("fusionguard_drift_psi", {"model": "ranker", "feature": "visual_tokens"})
    assert shifted > 0.25
    assert registry.get_sample_value("fusionguard_drift_pvalue", {"model": "ranker", "feature": "visual_tokens"}) < 0.01


def test_reload_swaps_model_and_info(models, toy, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    mapp, registry = make_app(registry=root)
    feeds = rows(toy, 0, 6)
    with TestClient(mapp.app) as c:
        r = c.post("/v2/models/ranker/infer", json=json_body(feeds))
        assert r.json()["model_version"] == "v0001"
        assert c.post("/v2/repository/models/ranker/load").json()["changed"] is False
        set_current(root, "v0002")
        assert c.post("/v2/repository/models/ranker/load").json() == {"name": "ranker", "version": "v0002", "changed": True}
        r = c.post("/v2/models/ranker/infer", json=json_body(feeds))
        assert r.json()["model_version"] == "v0002"
        got = np.array(r.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, plain_scores(models["fusion_w0.3"], feeds), rtol=1e-6)
        (root / "versions" / "v0002" / "model.onnx").write_bytes(b"corrupt")
        set_current(root, "v0001")
        (root / "versions" / "v0001" / "model.onnx").write_bytes(b"corrupt")
        r = c.post("/v2/repository/models/ranker/load")
        assert r.status_code == 500 and "still serving version 'v0002'" in r.json()["error"]
        assert c.post("/v2/models/ranker/infer", json=json_body(feeds)).status_code == 200
        assert c.post("/v2/repository/models/other/load").status_code == 404
    info = {
        s.labels["version"]
        for fam in registry.collect() if fam.name == "fusionguard_model_info"
        for s in fam.samples
    }
    assert info == {"v0002"}


def test_scoring_failure_is_500_and_counted(models, toy):
    mapp, registry = make_app(model=models["fusion"])

    def broken(state, feeds, masks):
        raise RuntimeError("session exploded")

    mapp.service.run = broken
    with TestClient(mapp.app) as c:
        r = c.post("/v2/models/ranker/infer", json=json_body(rows(toy, 0, 2)))
        assert r.status_code == 500 and "session exploded" in r.json()["error"]
        assert c.get("/v2/health/live").status_code == 200
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "error"}) == 1
    assert registry.get_sample_value("fusionguard_inflight_requests") == 0


def test_full_telemetry_queue_drops_and_counts(models, toy):
    from fusionguard.monitor.metrics import MonitorMetrics
    from fusionguard.monitor.telemetry import TelemetryConfig, TelemetryWorker

    svc = ModelService(ServiceConfig(model=models["fusion"], device="cpu"))
    registry = CollectorRegistry()
    worker = TelemetryWorker("ranker", MonitorMetrics.create(registry), config=TelemetryConfig(queue_size=2))
    scored = svc.score(rows(toy, 0, 3), True)
    assert [worker.submit(scored) for _ in range(4)] == [True, True, False, False]  # worker not started
    assert registry.get_sample_value("fusionguard_telemetry_dropped_total", {"model": "ranker"}) == 2
    worker.start()
    assert worker.wait_idle()
    worker.stop()
    assert registry.get_sample_value(
        "fusionguard_modality_share_count", {"model": "ranker", "version": svc.state.version, "modality": "visual"}
    ) == 2


@pytest.mark.parametrize("root_path", ["", "/prefix"], ids=["raw ASGI path", "starlette route (root_path)"])
def test_both_inference_paths_answer_alike(models, toy, root_path):
    """The raw ASGI inference path and the starlette route it stands in for (taken under a
    root_path) give the same answers, errors and counts."""
    mapp, registry = make_app(model=models["fusion"], telemetry_share=0.0)
    feeds = rows(toy, 0, 5)
    with TestClient(mapp.app, root_path=root_path) as c:
        ok = c.post(root_path + "/v2/models/ranker/infer", json=json_body(feeds))
        versioned = c.post(root_path + f"/v2/models/ranker/versions/{mapp.service.state.version}/infer", json=json_body(feeds))
        unknown = c.post(root_path + "/v2/models/nope/infer", json=json_body(feeds))
        bad = c.post(root_path + "/v2/models/ranker/infer", content=b"{not json")
        wrong_method = c.get(root_path + "/v2/models/ranker/infer")
    for r in (ok, versioned):
        assert r.status_code == 200
        got = np.asarray(r.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_array_equal(got, plain_scores(models["fusion"], feeds))
    assert unknown.status_code == 404 and "is not served here" in unknown.json()["error"]
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/json"
    assert wrong_method.status_code == 405 and wrong_method.headers["content-type"] == "application/json"
    assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": "ok"}) == 2
    assert registry.get_sample_value("fusionguard_invalid_requests_total", {"model": "ranker", "reason": "malformed_json"}) == 1
