"""OIP conformance with the real client: tritonclient's HTTP API surface, sync and aio, against a
real server on 127.0.0.1 (issue 16, deliverable 5): health, metadata, binary and JSON tensors,
request and response compression, the repository extension (index, load, unload) and errors."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from fusionguard.monitor.service import ServiceConfig
from tests.monitor.conftest import make_registry, rows, set_current
from tests.monitor.test_app import plain_scores

pytestmark = pytest.mark.integration

COMPRESSIONS = (None, "gzip", "deflate")


def _inputs(module, feeds: dict[str, np.ndarray], binary: bool) -> list:
    inputs = []
    for name, arr in feeds.items():
        inp = module.InferInput(name, list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def _outputs(module, binary: bool) -> list:
    return [module.InferRequestedOutput(n, binary_data=binary) for n in ("score", "attention")]


@pytest.fixture
def served(live_server, models, tmp_path):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    return live_server(ServiceConfig(registry=root, device="cpu", telemetry_share=0.5)), root


def _check_metadata(server_meta: dict, model_meta: dict, version: str) -> None:
    assert server_meta["name"] == "fusionguard"
    assert set(server_meta["extensions"]) == {"binary_tensor_data", "model_repository"}
    assert model_meta["name"] == "ranker" and model_meta["versions"] == [version]
    assert [i["name"] for i in model_meta["inputs"]] == ["query", "text_tokens", "visual_tokens"]
    params = model_meta["parameters"]
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values()), params
    assert params["modalities.text"] == "query,text_tokens" and params["modalities.visual"] == "visual_tokens"
    assert len(params["sha256"]) == 64


def _expect_error(call, status: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert err.value.status() == status, err.value
    assert fragment in err.value.message(), err.value.message()


def test_sync_client_surface(served, models, toy):
    live, root = served
    client = httpclient.InferenceServerClient(live.host_port)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ranker")
        assert client.is_model_ready("ranker", "v0001") and not client.is_model_ready("ranker", "v0009")
        _check_metadata(client.get_server_metadata(), client.get_model_metadata("ranker"), "v0001")

        # Every combination of tensor encoding and request/response compression.
        combos = list(itertools.product((True, False), COMPRESSIONS, COMPRESSIONS))
        for i, (binary, request_c, response_c) in enumerate(combos):
            feeds = rows(toy, 6 * (i % 12), 6 * (i % 12) + 2 + i % 5)
            result = client.infer(
                "ranker", _inputs(httpclient, feeds, binary), outputs=_outputs(httpclient, binary), request_id=f"r{i}",
                request_compression_algorithm=request_c, response_compression_algorithm=response_c,
            )
            np.testing.assert_allclose(result.as_numpy("score"), plain_scores(models["fusion"], feeds), rtol=1e-6)
            assert result.as_numpy("attention").shape == (len(feeds["query"]), 8, 8)
            assert result.get_response()["id"] == f"r{i}" and result.get_response()["model_version"] == "v0001"
        # Default outputs (every output, binary) and an explicit version.
        feeds = rows(toy, 0, 4)
        result = client.infer("ranker", _inputs(httpclient, feeds, True), model_version="v0001")
        np.testing.assert_allclose(result.as_numpy("score"), plain_scores(models["fusion"], feeds), rtol=1e-6)

        # The repository extension.
        assert client.get_model_repository_index() == [{"name": "ranker", "version": "v0001", "state": "READY", "reason": ""}]
        set_current(root, "v0002")
        client.load_model("ranker")
        assert client.get_model_repository_index()[0]["version"] == "v0002"
        assert client.get_model_metadata("ranker")["versions"] == ["v0002"]
        client.unload_model("ranker")
        assert not client.is_model_ready("ranker") and not client.is_server_ready()
        assert client.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        _expect_error(lambda: client.infer("ranker", _inputs(httpclient, feeds, True)), "503", "not loaded")
        client.load_model("ranker")
        assert client.is_server_ready() and client.is_model_ready("ranker")
        result = client.infer("ranker", _inputs(httpclient, feeds, False), outputs=_outputs(httpclient, False))
        np.testing.assert_allclose(result.as_numpy("score"), plain_scores(models["fusion_w0.3"], feeds), rtol=1e-6)

        # Errors arrive as InferenceServerException with the server's message and status.
        _expect_error(lambda: client.infer("nope", _inputs(httpclient, feeds, True)), "404", "not served")
        _expect_error(lambda: client.infer("ranker", _inputs(httpclient, feeds, True), model_version="v9"), "404", "not served")
        bad = httpclient.InferInput("query", [2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
        _expect_error(lambda: client.infer("ranker", [bad], request_compression_algorithm="gzip"), "400", "")
        _expect_error(lambda: client.get_model_metadata("other"), "404", "not served")
        _expect_error(lambda: client.load_model("other"), "404", "not served")
        _expect_error(lambda: client.load_model("ranker", config="{}"), "400", "not supported")
        _expect_error(lambda: client.unload_model("other"), "404", "not served")
        _expect_error(lambda: client.get_model_config("ranker"), "404", "/v2/models/ranker/config")
        _expect_error(lambda: client.get_inference_statistics("ranker"), "404", "stats")
    finally:
        client.close()
    m = live.metrics()
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == len(combos) + 2
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "unavailable")))] == 1
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "error")))] == 0


def test_aio_client_surface(served, models, toy):
    live, root = served

    async def run() -> None:
        async with aioclient.InferenceServerClient(live.host_port) as client:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("ranker")
            _check_metadata(await client.get_server_metadata(), await client.get_model_metadata("ranker"), "v0001")

            async def one(i: int, binary: bool, request_c, response_c) -> None:
                feeds = rows(toy, 6 * (i % 12), 6 * (i % 12) + 6)
                result = await client.infer(
                    "ranker", _inputs(aioclient, feeds, binary), outputs=_outputs(aioclient, binary),
                    request_compression_algorithm=request_c, response_compression_algorithm=response_c,
                )
                np.testing.assert_allclose(result.as_numpy("score"), plain_scores(models["fusion"], feeds), rtol=1e-6)

            combos = list(itertools.product((True, False), COMPRESSIONS, COMPRESSIONS))
            await asyncio.gather(*(one(i, *c) for i, c in enumerate(combos)))  # concurrently, on one session

            assert (await client.get_model_repository_index())[0]["state"] == "READY"
            await client.unload_model("ranker")
            assert not await client.is_server_ready()
            set_current(root, "v0002")
            await client.load_model("ranker")
            assert (await client.get_model_repository_index())[0]["version"] == "v0002"
            with pytest.raises(InferenceServerException) as err:
                await client.infer("nope", _inputs(aioclient, rows(toy, 0, 2), True))
            assert err.value.status() == "404"
            with pytest.raises(InferenceServerException) as err:
                await client.load_model("other")
            assert err.value.status() == "404"

    asyncio.run(run())
    m = live.metrics()
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == 18
