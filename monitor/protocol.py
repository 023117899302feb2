"""The Open Inference Protocol v2 wire format: JSON tensors and Triton's binary-tensor extension.

A request body is a JSON object, optionally followed by raw tensor bytes. When binary data
follows, the header `Inference-Header-Content-Length` gives the size of the JSON part, and each
input sent in binary carries `parameters.binary_data_size`; the chunks follow the JSON in the
order of the inputs that have one. A response uses the same layout: outputs requested in binary
(`outputs[i].parameters.binary_data`, or the request-wide `parameters.binary_data_output`, which
`tritonclient.http` sets when it asks for no output by name) are appended as raw little-endian
bytes after the JSON, and the response carries `Inference-Header-Content-Length`.

Bodies may be compressed (`Content-Encoding: gzip` or `deflate`, as `tritonclient` sends with
`request_compression_algorithm`); `decode_content` inflates them under the same size limit as a
plain body, and `negotiate_encoding` / `encode_content` compress a response when the client's
`Accept-Encoding` asks for it. The JSON header's length always counts uncompressed bytes.

Everything here is pure: bytes in, arrays out, so it is tested without a server. Problems raise
`ProtocolError` with a short, fixed `reason` (the metric label) and a message for the client.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionguard.errors import InvalidInputError

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 32  # numpy's own limit is 64; no ranking tensor comes close
MAX_DIM_SIZE = 2**31 - 1  # larger dimensions cannot be a real request (and overflow numpy's shape checks)
ENCODINGS = ("gzip", "deflate")  # Content-Encoding accepted on requests and offered on responses

# OIP datatype <-> numpy dtype (BYTES and BF16 are not used by ranking models and are rejected).
_OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NUMPY_TO_OIP = {dt.name: name for name, dt in _OIP_TO_NUMPY.items()}


class ProtocolError(InvalidInputError):
    """A request the service cannot accept (HTTP 4xx). `reason` is the metric label."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


_OIP_BY_DTYPE = {dt: name for name, dt in _OIP_TO_NUMPY.items()}  # dtype.name is slow; a dtype hashes fast


def oip_datatype(dtype: np.dtype | str) -> str:
    """The OIP datatype name of a numpy dtype (`float32` -> `FP32`)."""
    found = _OIP_BY_DTYPE.get(dtype) if isinstance(dtype, np.dtype) else None
    if found is not None:
        return found
    name = np.dtype(dtype).name
    if name not in _NUMPY_TO_OIP:
        raise ValueError(f"numpy dtype {name} has no Open Inference Protocol datatype")
    return _NUMPY_TO_OIP[name]


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype name; ProtocolError('unsupported_datatype') when unsupported."""
    try:
        return _OIP_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(
            "unsupported_datatype", f"datatype {datatype!r} is not supported; use one of {sorted(_OIP_TO_NUMPY)}"
        ) from None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # send the tensor as raw bytes after the JSON header


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: dict[str, np.ndarray]  # name -> array with the shape and dtype the client declared
    outputs: tuple[RequestedOutput, ...] | None  # None: every model output
    binary_output: bool  # default for outputs not named in `outputs`
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _header_length(headers: Mapping[str, str], body_len: int) -> int | None:
    raw = headers.get(HEADER_LENGTH) or headers.get(HEADER_LENGTH.lower())
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ProtocolError("malformed_binary", f"header {HEADER_LENGTH} is {raw!r}; it must be an integer") from None
    if not 0 < n <= body_len:
        raise ProtocolError(
            "malformed_binary", f"header {HEADER_LENGTH} is {n} but the body has {body_len} bytes; it must be in [1, {body_len}]"
        )
    return n


def _shape(tensor: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError("malformed_json", f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_DIMS or any(d > MAX_DIM_SIZE for d in shape):
        raise ProtocolError(
            "wrong_shape", f"{where}: shape {shape!r} is out of range (at most {MAX_DIMS} dimensions of at most {MAX_DIM_SIZE})"
        )
    return tuple(shape)


def _json_data(data: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise ProtocolError("malformed_json", f"{where}: 'data' is not a list of {dtype.name} values ({err})") from None
    expected = math.prod(shape)
    if arr.size != expected:
        raise ProtocolError("wrong_shape", f"{where}: 'data' holds {arr.size} values but shape {list(shape)} needs {expected}")
    return arr.reshape(shape)


def decode_request(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    """Decode an OIP v2 inference request (JSON, or JSON + binary tensors).

    Raises:
        ProtocolError: malformed JSON or binary layout, unsupported datatype, data/shape mismatch.
    """
    n_json = _header_length(headers, len(body))
    view = memoryview(body)  # slices of a memoryview share the body's bytes (no copy per tensor)
    json_part = view if n_json is None else view[:n_json]
    binary = view[len(view):] if n_json is None else view[n_json:]
    try:
        doc = json.loads(bytes(json_part).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError("malformed_json", f"request body is not valid JSON ({err})") from None
    except RecursionError:
        raise ProtocolError("malformed_json", "request body nests JSON too deeply; tensors need at most a few levels") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError("malformed_json", "request must be a JSON object with an 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("malformed_json", "request 'parameters' must be an object")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ProtocolError("malformed_json", f"inputs[{i}] must be an object with a string 'name'")
        name = tensor["name"]
        where = f"input '{name}'"
        if name in inputs:
            raise ProtocolError("malformed_json", f"{where} is given more than once")
        shape = _shape(tensor, where)
        dtype = numpy_dtype(tensor.get("datatype"))
        tparams = tensor.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise ProtocolError("malformed_json", f"{where}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise ProtocolError("malformed_json", f"{where} has neither 'data' nor parameters.binary_data_size")
            inputs[name] = _json_data(tensor["data"], shape, dtype, where)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError("malformed_binary", f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if n_json is None:
            raise ProtocolError(
                "malformed_binary", f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header"
            )
        if offset + size > len(binary):
            raise ProtocolError(
                "malformed_binary",
                f"{where} declares {size} binary bytes at offset {offset}, but only {len(binary) - offset} remain",
            )
        expected = math.prod(shape) * dtype.itemsize
        if size != expected:
            raise ProtocolError(
                "wrong_shape", f"{where}: {size} binary bytes do not match shape {list(shape)} of {dtype.name} ({expected} bytes)"
            )
        inputs[name] = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
        offset += size
    if offset != len(binary):
        raise ProtocolError(
            "malformed_binary", f"{len(binary) - offset} bytes after the declared binary tensors; check binary_data_size"
        )

    binary_default = bool(params.get("binary_data_output", False))
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("malformed_json", "'outputs' must be a list of {name, parameters} objects")
        requested = []
        for i, out in enumerate(doc["outputs"]):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError("malformed_json", f"outputs[{i}] must be an object with a string 'name'")
            oparams = out.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise ProtocolError("malformed_json", f"outputs[{i}]: 'parameters' must be an object")
            requested.append(RequestedOutput(out["name"], bool(oparams.get("binary_data", binary_default))))
        outputs = tuple(requested)
    req_id = doc.get("id")
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_default,
        id=str(req_id) if req_id is not None else None,
        parameters=params,
    )


def encode_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode the response for `request`: (body, extra headers).

    Args:
        outputs: every output the model produced, name -> array.
    Raises:
        ProtocolError('unknown_output'): the request names an output the model does not have.
    """
    wanted = request.outputs
    if wanted is None:
        wanted = tuple(RequestedOutput(name, request.binary_output) for name in outputs)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = dict(parameters)
    chunks: list[bytes] = []
    for out in wanted:
        if out.name not in outputs:
            raise ProtocolError("unknown_output", f"output '{out.name}' is not an output of this model; it has {sorted(outputs)}")
        arr = np.ascontiguousarray(outputs[out.name])
        entry: dict[str, Any] = {"name": out.name, "datatype": oip_datatype(arr.dtype), "shape": list(arr.shape)}
        if out.binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        doc["outputs"].append(entry)
    # allow_nan=False: NaN is not JSON; the app answers non-finite outputs 500 before it gets here.
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def tensor_metadata(names_shapes: Sequence[tuple[str, str, Sequence[int]]]) -> list[dict[str, Any]]:
    """OIP metadata entries `{name, datatype, shape}`; the batch axis is -1 (variable)."""
    return [{"name": n, "datatype": oip_datatype(dt), "shape": [-1, *shape]} for n, dt, shape in names_shapes]


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body with its `Content-Encoding` undone, at most `limit` bytes once inflated.

    `deflate` is the zlib format (RFC 9110; what tritonclient sends); raw deflate is accepted too.

    Raises:
        ProtocolError: 415 'unsupported_encoding', 400 'malformed_encoding', 413 'body_too_large'.
    """
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ENCODINGS:
        raise ProtocolError(
            "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate", 415
        )
    wbits = [31] if enc == "gzip" else [15, -15]  # gzip container; zlib container, then raw deflate
    for i, bits in enumerate(wbits):
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as err:
            if i + 1 < len(wbits):
                continue
            raise ProtocolError("malformed_encoding", f"request body is not valid {enc} data ({err})") from None
        if len(out) > limit:
            raise ProtocolError(
                "body_too_large", f"request body inflates beyond the limit of {limit} bytes; send fewer candidates per request", 413
            )
        if not inflater.eof:
            raise ProtocolError("malformed_encoding", f"request body is truncated {enc} data")
        return out
    raise AssertionError("unreachable")  # pragma: no cover


def negotiate_encoding(accept_encoding: str | None) -> str | None:
    """The response encoding to use for an `Accept-Encoding` header: 'gzip', 'deflate' or None.

    Honours q-values (`q=0` refuses); on a tie the client's order decides, gzip before deflate for `*`.
    """
    if not accept_encoding:
        return None
    best, best_q = None, 0.0
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        candidates = ENCODINGS if name == "*" else (name,) if name in ENCODINGS else ()
        for candidate in candidates:
            if q > best_q:
                best, best_q = candidate, q
    return best


def encode_content(payload: bytes, encoding: str) -> bytes:
    """`payload` compressed for `Content-Encoding: encoding` ('gzip', or 'deflate' in the zlib format)."""
    if encoding == "gzip":
        return gzip.compress(payload, compresslevel=6, mtime=0)
    if encoding == "deflate":
        return zlib.compress(payload, 6)
    raise ValueError(f"unknown encoding {encoding!r}")


def flat_parameters(params: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """OIP `parameters` hold strings, numbers and booleans only: nested mappings become dotted keys,
    lists comma-joined strings, None values are left out."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.update(flat_parameters(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
