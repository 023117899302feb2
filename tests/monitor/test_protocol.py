"""The OIP v2 wire format, checked against tritonclient's own encoder and decoder."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from fusionguard.monitor.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    decode_content,
    decode_request,
    encode_content,
    encode_response,
    flat_parameters,
    negotiate_encoding,
)

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


def _nested(depth: int) -> list:
    """[[[...[1]...]]] nested `depth` levels (beyond numpy's 64 dimensions, within Python's recursion limit)."""
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value

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
    ("zero-size huge shape", json.dumps({"inputs": [{**GOOD, "shape": [0, 10**30], "data": []}]}).encode(), {}, "wrong_shape"),
    ("zero-size huge binary", *_binary({"inputs": [{**GOOD, "shape": [0, 10**30], "parameters": {"binary_data_size": 0}}]}, b""), "wrong_shape"),
    ("too many dims", json.dumps({"inputs": [{**GOOD, "shape": [1] * 40, "data": [1]}]}).encode(), {}, "wrong_shape"),
    ("deeply nested body", b"[" * 200_000 + b"]" * 200_000, {}, "malformed_json"),
    ("deeply nested data", ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + "[" * 200_000 + "1"
                            + "]" * 200_000 + "}]}").encode(), {}, "malformed_json"),
    ("nested data beyond numpy", json.dumps({"inputs": [{**GOOD, "shape": [1], "data": _nested(100)}]}).encode(), {}, "malformed_json"),
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


# ----- Content-Encoding and Accept-Encoding ------------------------------------------------------

PAYLOAD = json.dumps({"inputs": [{**GOOD, "data": [1.5, 2.5]}]}).encode() * 3


@pytest.mark.parametrize(
    "encoding, compress",
    [
        (None, lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),  # the zlib container: what tritonclient and RFC 9110 mean
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some clients send
    ],
)
def test_compressed_bodies_are_inflated(encoding, compress):
    assert decode_content(compress(PAYLOAD), encoding, limit=len(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize(
    "body, encoding, status, reason",
    [
        (gzip.compress(b"0" * 100_000), "gzip", 413, "body_too_large"),  # a small bomb under a 1 kB limit
        (zlib.compress(b"0" * 100_000), "deflate", 413, "body_too_large"),
        (b"not gzip at all", "gzip", 400, "malformed_encoding"),
        (gzip.compress(PAYLOAD)[:-12], "gzip", 400, "malformed_encoding"),  # truncated
        (b"\xff" * 20, "deflate", 400, "malformed_encoding"),
        (PAYLOAD, "br", 415, "unsupported_encoding"),
    ],
)
def test_bad_compressed_bodies(body, encoding, status, reason):
    with pytest.raises(ProtocolError) as err:
        decode_content(body, encoding, limit=1000)
    assert (err.value.status, err.value.reason) == (status, reason)


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("br", None),
        ("identity", None),
        ("gzip;q=0, deflate", "deflate"),
        ("deflate;q=0.5, gzip;q=0.8", "gzip"),
        ("br, deflate;q=0.9, *;q=0.1", "deflate"),
        ("*", "gzip"),
        ("gzip;q=nonsense", None),
    ],
)
def test_response_encoding_negotiation(header, expected):
    assert negotiate_encoding(header) == expected


@pytest.mark.parametrize("encoding, inflate", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_response_compression_round_trips_through_tritonclient(encoding, inflate):
    score = np.array([0.5, -1.25, 3.0], np.float32)
    req = InferRequest(inputs={}, outputs=None, binary_output=True)
    body, headers = encode_response("ranker", "v1", {"score": score}, req)
    packed = encode_content(body, encoding)
    assert inflate(packed) == body
    result = httpclient.InferResult.from_response_body(
        packed, header_length=int(headers[HEADER_LENGTH]), content_encoding=encoding
    )
    np.testing.assert_array_equal(result.as_numpy("score"), score)


def test_parameters_are_flattened_to_protocol_types():
    flat = flat_parameters(
        {"sha256": "ab", "variant": None, "n": 3, "ok": True, "modalities": {"text": ["query", "text_tokens"], "visual": ["v"]},
         "keys": {"visual": [4, 5]}, "deep": {"a": {"b": 1.5}}}
    )
    assert flat == {"sha256": "ab", "n": 3, "ok": True, "modalities.text": "query,text_tokens", "modalities.visual": "v",
                    "keys.visual": "4,5", "deep.a.b": 1.5}


def test_non_finite_outputs_are_never_encoded_as_json():
    req = InferRequest(inputs={}, outputs=None, binary_output=False)
    with pytest.raises(ValueError):
        encode_response("m", "v", {"score": np.array([np.nan], np.float32)}, req)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)
_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y"])},
    optional={
        "datatype": st.one_of(st.sampled_from(["FP32", "INT64", "BOOL", "BYTES"]), _json_values),
        "shape": st.one_of(st.lists(st.integers(-2, 2**65), max_size=4), _json_values),
        "data": _json_values,
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64)}), _json_values),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.lists(_tensors, max_size=3), _json_values),
    st.one_of(st.none(), _json_values),
    st.binary(max_size=64),
    st.booleans(),
)
def test_decoder_never_crashes_on_structured_garbage(inputs, outputs, tail, with_header):
    """Random documents in the request's shape: a ProtocolError with a reason, or a decoded request."""
    doc = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    body, headers = (doc + tail, {HEADER_LENGTH: str(len(doc))}) if with_header else (doc, {})
    try:
        req = decode_request(body, headers)
    except ProtocolError as err:
        assert err.reason and err.status in (400, 413)
    else:
        assert all(isinstance(a, np.ndarray) for a in req.inputs.values())
