"""Dynamic batching: merged session.run calls give every request exactly its unbatched scores;
telemetry stays per request; version boundaries, oversize requests and failures; shutdown drains
the queue."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from fusionguard.errors import EvaluationError
from fusionguard.scorer import Mask, Scorer
from fusionguard.monitor.app import AppConfig
from fusionguard.monitor.batching import BatchingConfig, DynamicBatcher
from fusionguard.monitor.service import FULL_ONLY, TELEMETRY_MASKS, ModelService, Sampler, ServiceConfig
from tests.monitor.conftest import json_body, rows

pytestmark = pytest.mark.integration

# Requests of different sizes, as concurrent clients send them (rows of the toy dataset).
SPANS = [(0, 6), (6, 9), (9, 10), (12, 30), (30, 36), (40, 41), (41, 72)]


@pytest.mark.parametrize("model", ["fusion", "fusion_w0.3", "text", "affine"])
def test_merged_run_is_bit_identical_to_one_run_per_request(models, toy, model):
    """ONNX Runtime's kernels on these graphs compute each row independently of the batch size:
    the merged call reproduces every request's unbatched scores and attention bit for bit."""
    scorer = Scorer(models[model], device="cpu", threads=1)
    two = scorer.contract.has_modality("text") and scorer.contract.has_modality("visual")
    names = scorer.contract.input_names
    requests = [({k: v for k, v in rows(toy, a, b).items() if k in names}, TELEMETRY_MASKS if two and i % 2 else FULL_ONLY)
                for i, (a, b) in enumerate(SPANS)]
    merged = scorer.run_many(requests)
    for (feeds, masks), got in zip(requests, merged):
        alone = scorer.run_valid(feeds, masks)
        assert len(got) == len(masks)
        for g, want in zip(got, alone):
            np.testing.assert_array_equal(g.score, want.score)
            if want.attention is not None:
                np.testing.assert_array_equal(g.attention, want.attention)


def _post_all(url: str, bodies: list[dict], workers: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: httpx.post(url + "/v2/models/ranker/infer", json=b, timeout=30), bodies))


def test_batched_server_answers_each_request_its_unbatched_scores(live_server, models, toy):
    live = live_server(
        ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=0.5, telemetry_seed=7),
        AppConfig(batching=BatchingConfig(max_batch_rows=4096, max_queue_delay_us=50_000)),
    )
    plain = Scorer(models["fusion"], device="cpu", threads=1)
    feeds = [rows(toy, a, b) for a, b in SPANS] * 2
    answers = _post_all(live.url, [json_body(f) for f in feeds], workers=len(feeds))
    assert [r.status_code for r in answers] == [200] * len(feeds)
    for f, r in zip(feeds, answers):
        out = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
        want = plain.run(f)[0]
        np.testing.assert_array_equal(out["score"], want.score)
        np.testing.assert_array_equal(out["attention"], want.attention)
    assert live.app.worker.wait_idle()
    m = live.metrics()
    key = (("model", "ranker"),)
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == len(feeds)
    # merged: fewer ONNX Runtime calls than requests, every request counted on its own
    assert m[("fusionguard_merged_requests_sum", key)] == len(feeds)
    assert m[("fusionguard_merged_requests_count", key)] < len(feeds)
    assert m[("fusionguard_batch_size_sum", key)] == sum(len(f["query"]) for f in feeds)
    # telemetry per request: the seeded sampler's decisions, each with its own share observation
    sampled = m[("fusionguard_telemetry_requests_total", key)]
    replica = Sampler(0.5, seed=7)
    assert sampled == sum(replica() for _ in feeds) and 0 < sampled < len(feeds)
    share_count = m[("fusionguard_modality_share_count", (("modality", "visual"), ("model", "ranker"),
                                                          ("version", live.app.service.state.version)))]
    assert share_count == sampled


class _FakeScorer:
    """Records each merged call; fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail
        self._real = None

    def run_many(self, requests):
        self.calls.append([int(f["x"].shape[0]) * len(m) for f, m in requests])
        if self.fail:
            raise EvaluationError("ONNX Runtime failed to score: boom")
        from fusionguard.scorer import Outputs

        return [[Outputs(f["x"][:, 0] + i, None) for i in range(len(m))] for f, m in requests]


class _State:
    def __init__(self, scorer) -> None:
        self.scorer = scorer


def _run_batcher(config: BatchingConfig, jobs, hold: float = 0.0):
    """Queue `jobs` [(state, n_rows, masks)] at once; returns the results (or exceptions)."""

    async def main():
        batcher = DynamicBatcher(config)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.score(state, {"x": np.ones((n, 2), np.float32) * k}, masks))
                 for k, (state, n, masks) in enumerate(jobs)]
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return out

    return asyncio.run(main())


def test_batches_respect_max_rows_versions_and_oversize_requests():
    old, new = _FakeScorer(), _FakeScorer()
    s_old, s_new = _State(old), _State(new)
    full, four = (Mask(),), TELEMETRY_MASKS
    jobs = [(s_old, 3, full), (s_old, 2, four), (s_old, 4, full), (s_new, 1, full), (s_new, 50, full), (s_new, 2, full)]
    out = _run_batcher(BatchingConfig(max_batch_rows=12, max_queue_delay_us=20_000), jobs)
    # old version: 3 + 8 rows fit in 12, the next 4 would not; the new version never shares a call
    assert old.calls == [[3, 8], [4]]
    assert new.calls == [[1], [50], [2]]  # 50 rows exceed the limit: alone; then the rest
    for k, ((state, n, masks), scored) in enumerate(zip(jobs, out)):
        assert scored.state is state and len(scored.outputs) == len(masks)
        assert scored.telemetry == (len(masks) == 4)
        for i, o in enumerate(scored.outputs):  # each request got its own rows back
            np.testing.assert_array_equal(o.score, np.full(n, k + i, np.float32))


def test_a_failed_merged_call_fails_each_of_its_requests_and_the_batcher_goes_on():
    bad = _FakeScorer(fail=True)
    out = _run_batcher(BatchingConfig(max_batch_rows=100, max_queue_delay_us=20_000),
                       [(_State(bad), 2, (Mask(),)), (_State(bad), 3, (Mask(),))])
    assert all(isinstance(e, EvaluationError) for e in out)
    good = _FakeScorer()
    assert not isinstance(_run_batcher(BatchingConfig(max_batch_rows=100), [(_State(good), 2, (Mask(),))])[0], Exception)


def test_graceful_shutdown_answers_every_queued_request(live_server, models, toy):
    """Requests waiting in the batcher's queue when shutdown starts are still scored and answered."""
    delay_s = 1.5
    live = live_server(
        ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=0.0),
        AppConfig(batching=BatchingConfig(max_batch_rows=100_000, max_queue_delay_us=int(delay_s * 1e6))),
    )
    feeds = [rows(toy, a, b) for a, b in SPANS[:4]]
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda b=json_body(f): results.append(
        httpx.post(live.url + "/v2/models/ranker/infer", json=b, timeout=30))) for f in feeds]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while live.app._batcher is None or live.app._batcher.queued < len(feeds):  # all queued, none run yet
        assert time.monotonic() < deadline, "the requests did not reach the batcher's queue"
        time.sleep(0.005)
    live.server.should_exit = True  # shutdown starts while they wait for the batch to fill
    for t in threads:
        t.join(20)
    assert sorted(r.status_code for r in results) == [200] * len(feeds)
    live.thread.join(10)
    assert not live.thread.is_alive()


def test_service_admit_validates_once_and_scorer_does_not_check_again(models, toy, monkeypatch):
    import fusionguard.scorer as scorer_module
    import fusionguard.monitor.service as service_module

    calls = []
    real = service_module.feed_problems
    monkeypatch.setattr(service_module, "feed_problems", lambda c, f: calls.append("service") or real(c, f))
    monkeypatch.setattr(scorer_module, "check_feeds", lambda c, f: calls.append("scorer") or 0)
    service = ModelService(ServiceConfig(model=models["fusion"], device="cpu"))
    scored = service.score(rows(toy, 0, 6), telemetry=True)
    assert calls == ["service"] and scored.telemetry and len(scored.outputs) == 4


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_shapley_passes_after_the_response_are_run_and_observed_before_shutdown_ends(live_server, models, toy, batching):
    """A sampled request is answered from its unmasked pass; its masked passes (the batcher's
    deferred jobs, or the telemetry thread's) still complete during a graceful shutdown, and the
    shares observed are those of one four-pass call per request."""
    delay_s = 1.0
    app = AppConfig(batching=BatchingConfig(max_batch_rows=100_000, max_queue_delay_us=int(delay_s * 1e6))) if batching else AppConfig()
    live = live_server(ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=1.0), app)
    feeds = [rows(toy, a, b) for a, b in SPANS[:4]]
    results = _post_all(live.url, [json_body(f) for f in feeds], workers=len(feeds))
    assert [r.status_code for r in results] == [200] * len(feeds)
    live.server.should_exit = True  # with batching, the deferred passes wait in the queue for up to delay_s
    live.thread.join(20)
    assert not live.thread.is_alive()

    service = ModelService(ServiceConfig(model=models["fusion"], device="cpu", telemetry_share=1.0))
    from fusionguard.monitor.telemetry import request_values

    want = [request_values(service.score(f, telemetry=True))["visual_share"] for f in feeds]
    labels = {"model": "ranker", "modality": "visual", "version": live.app.service.state.version}
    reg = live.app.registry
    assert reg.get_sample_value("fusionguard_telemetry_requests_total", {"model": "ranker"}) == len(feeds)
    assert reg.get_sample_value("fusionguard_modality_share_count", labels) == len(feeds)
    assert reg.get_sample_value("fusionguard_modality_share_sum", labels) == pytest.approx(sum(want), rel=1e-12)
