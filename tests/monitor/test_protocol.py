"""The OIP v2 wire format, checked against tritonclient's own encoder and decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from monitor.protocol import HEADER_LENGTH, InferRequest, ProtocolError, RequestedOutput, decode_request, encode_response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16, "UINT8": np.uint8}


def triton_body(arrays: dict[str, np.ndarray], binary: bool, outputs=None) -> tuple[bytes, dict[str, str]]:
    """What tritonclient.http sends for these arrays (its own encoder is the reference)."""
    inputs = []
    for name, arr in arrays.items():
        inp = httpclient.InferInput(name, list(arr.shape), {v: k for k, v in DTYPES.items()}[arr.dtype.type])
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    body, json_size = _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)
    headers = {} if json_size is None else {HEADER_LENGTH: str(json_size)}
    return (body if isinstance(body, bytes) else body.encode()), headers


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 4), min_size=1, max_size=3)),
        min_size=1, max_size=3,
    ),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_decode_matches_tritonclient_encoder(specs, binary, seed):
    rng = np.random.default_rng(seed)
    arrays = {f"in{i}": (rng.standard_normal(shape) * 10).astype(DTYPES[dt]) for i, (dt, shape) in enumerate(specs)}
    body, headers = triton_body(arrays, binary)
    req = decode_request(body, headers)
    assert set(req.inputs) == set(arrays)
    for name, arr in arrays.items():
        assert req.inputs[name].dtype == arr.dtype
        np.testing.assert_array_equal(req.inputs[name], arr)
    assert req.binary_output is True  # tritonclient asks for binary outputs when it names none


@pytest.mark.parametrize("binary", [True, False])
def test_response_parsed_by_tritonclient(binary):
    score = np.array([0.5, -1.25, 3.0], np.float32)
    attention = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4) / 10
    req = InferRequest(inputs={}, outputs=None, binary_output=binary, id="r1")
    body, headers = encode_response("ranker", "v1", {"score": score, "attention": attention}, req)
    result = httpclient.InferResult.from_response_body(body, header_length=int(headers[HEADER_LENGTH]) if binary else None)
    np.testing.assert_array_equal(result.as_numpy("score"), score)
    np.testing.assert_array_equal(result.as_numpy("attention"), attention)
    assert result.get_response()["model_version"] == "v1"
    assert result.get_response()["id"] == "r1"
    assert (HEADER_LENGTH in headers) is binary


def test_requested_outputs_mixed_binary_and_json():
    outputs = [httpclient.InferRequestedOutput("score", binary_data=False), httpclient.InferRequestedOutput("attention")]
    body, headers = triton_body({"x": np.zeros((1, 2), np.float32)}, True, outputs)
    req = decode_request(body, headers)
    assert req.outputs == (RequestedOutput("score", False), RequestedOutput("attention", True))
    score, att = np.ones(2, np.float32), np.ones((2, 1, 2), np.float32)
    resp, rh = encode_response("m", "v", {"score": score, "attention": att}, req)
    doc = json.loads(resp[: int(rh[HEADER_LENGTH])])
    assert doc["outputs"][0]["data"] == [1.0, 1.0]
    assert doc["outputs"][1]["parameters"]["binary_data_size"] == att.nbytes
    only_score = InferRequest(inputs={}, outputs=(RequestedOutput("nope", False),), binary_output=False)
    with pytest.raises(ProtocolError) as err:
        encode_response("m", "v", {"score": score}, only_score)
    assert err.value.reason == "unknown_output"


def _binary(header: dict, payload: bytes) -> tuple[bytes, dict]:
    h = json.dumps(header).encode()
    return h + payload, {HEADER_LENGTH: str(len(h))}


GOOD = {"name": "x", "datatype": "FP32", "shape": [2]}
BAD_CASES = [
    ("not json", b"{nope", {}, "malformed_json"),
    ("not an object", b"[1, 2]", {}, "malformed_json"),
    ("no inputs", b'{"outputs": []}', {}, "malformed_json"),
    ("input without name", json.dumps({"inputs": [{"shape": [1]}]}).encode(), {}, "malformed_json"),
    ("duplicate input", json.dumps({"inputs": [{**GOOD, "data": [1, 2]}, {**GOOD, "data": [1, 2]}]}).encode(), {}, "malformed_json"),
    ("negative shape", json.dumps({"inputs": [{**GOOD, "shape": [-1], "data": [1]}]}).encode(), {}, "malformed_json"),
    ("bad datatype", json.dumps({"inputs": [{**GOOD, "datatype": "BYTES", "data": ["a", "b"]}]}).encode(), {}, "unsupported_datatype"),
    ("data count", json.dumps({"inputs": [{**GOOD, "data": [1, 2, 3]}]}).encode(), {}, "wrong_shape"),
    ("data not numbers", json.dumps({"inputs": [{**GOOD, "data": ["a", "b"]}]}).encode(), {}, "malformed_json"),
    ("huge shape", json.dumps({"inputs": [{**GOOD, "shape": [10**30], "data": [1]}]}).encode(), {}, "wrong_shape"),
    ("huge binary shape", *_binary({"inputs": [{**GOOD, "shape": [2**40, 2**40], "parameters": {"binary_data_size": 8}}]}, b"\0" * 8), "wrong_shape"),
    ("no data", json.dumps({"inputs": [GOOD]}).encode(), {}, "malformed_json"),
    ("header not int", b'{"inputs": []}', {HEADER_LENGTH: "abc"}, "malformed_binary"),
    ("header too long", b'{"inputs": []}', {HEADER_LENGTH: "999"}, "malformed_binary"),
    ("binary without header", json.dumps({"inputs": [{**GOOD, "parameters": {"binary_data_size": 8}}]}).encode(), {}, "malformed_binary"),
    ("binary short", *_binary({"inputs": [{**GOOD, "parameters": {"binary_data_size": 8}}]}, b"\0" * 4), "malformed_binary"),
    ("binary size vs shape", *_binary({"inputs": [{**GOOD, "parameters": {"binary_data_size": 4}}]}, b"\0" * 4), "wrong_shape"),
    ("binary trailing", *_binary({"inputs": [{**GOOD, "parameters": {"binary_data_size": 8}}]}, b"\0" * 12), "malformed_binary"),
    ("binary size not int", *_binary({"inputs": [{**GOOD, "parameters": {"binary_data_size": "8"}}]}, b"\0" * 8), "malformed_binary"),
]


@pytest.mark.parametrize("case, body, headers, reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_requests_have_a_reason(case, body, headers, reason):
    with pytest.raises(ProtocolError) as err:
        decode_request(body, headers)
    assert err.value.reason == reason
    assert err.value.status == 400
    assert str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-5, 300)))
def test_decoder_never_crashes_on_garbage(body, header):
    headers = {} if header is None else {HEADER_LENGTH: str(header)}
    try:
        decode_request(body, headers)
    except ProtocolError as err:
        assert err.reason
