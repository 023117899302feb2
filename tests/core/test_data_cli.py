"""`fusionguard data validate`: exit 0 with a summary, or exit 2 with one message listing every problem."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.dataset import write_dataset

from .conftest import D, matching_inputs


def _run(*args: str):
    return CliRunner().invoke(cli, ["data", "validate", *map(str, args)])


def _write(path, a, drop=(), **changes):
    feeds = {k: v for k, v in a["feeds"].items() if k not in drop}
    cols = {k: changes.get(k, a[k]) for k in ("query_id", "item_id", "label")}
    return write_dataset(path, cols["query_id"], cols["item_id"], cols["label"], feeds)


def test_valid_file_exits_0_with_counts(tiny_dataset, tiny_model_path):
    result = _run(tiny_dataset, "--model", tiny_model_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{tiny_dataset}: valid, 20 rows, 5 queries"


def test_valid_file_without_a_model(tiny_dataset):
    result = _run(tiny_dataset)
    assert result.exit_code == 0, result.output
    assert "20 rows, 5 queries" in result.stdout


def _nan(tmp, a):
    a["feeds"]["query"][2, 1] = np.nan
    return _write(tmp / "d.parquet", a)


def _duplicate(tmp, a):
    item = a["item_id"].copy()
    item[3] = item[2]
    return _write(tmp / "d.parquet", a, item_id=item)


def _wrong_length(tmp, a):
    a["feeds"]["query"] = np.zeros((20, D + 3), np.float32)
    return _write(tmp / "d.parquet", a)


def _no_rows(tmp, a):
    empty = {"query_id": a["query_id"][:0], "item_id": a["item_id"][:0], "label": a["label"][:0],
             "feeds": {k: v[:0] for k, v in a["feeds"].items()}}
    return _write(tmp / "d.parquet", empty)


def _zero_bytes(tmp, a):
    (tmp / "d.parquet").write_bytes(b"")
    return tmp / "d.parquet"


def _text_file(tmp, a):
    (tmp / "d.parquet").write_text("query_id,item_id,label\n")
    return tmp / "d.parquet"


def _truncated(tmp, a):
    path = _write(tmp / "full.parquet", a)
    (tmp / "d.parquet").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return tmp / "d.parquet"


def _string_label(tmp, a):
    table = pq.read_table(_write(tmp / "d.parquet", a))
    table = table.set_column(2, "label", pa.array([str(x) for x in a["label"]]))
    pq.write_table(table, tmp / "d.parquet")
    return tmp / "d.parquet"


def _everything(tmp, a):
    a["feeds"]["query"][0, 0] = np.inf
    item = a["item_id"].copy()
    item[1] = item[0]
    label = a["label"].copy()
    label[8:12] = 0
    return _write(tmp / "d.parquet", a, drop=("visual_tokens",), item_id=item, label=label)


# (id, dataset builder, fragments that must all appear in the one error message)
BAD_DATA = [
    ("missing-file", lambda tmp, a: tmp / "nope.parquet", ["does not exist"]),
    ("zero-bytes", _zero_bytes, ["empty file (0 bytes)"]),
    ("not-parquet", _text_file, ["not a readable Parquet file"]),
    ("truncated-parquet", _truncated, ["not a readable Parquet file"]),
    ("no-rows", _no_rows, ["the dataset has no rows"]),
    ("missing-column", lambda tmp, a: _write(tmp / "d.parquet", a, drop=("visual_tokens",)),
     ["missing columns ['visual_tokens']"]),
    ("nan", _nan, ["column 'query': 1 rows contain NaN"]),
    ("wrong-vector-length", _wrong_length, [f"column 'query': 20 rows do not hold {D} values"]),
    ("duplicate-pair", _duplicate, ["2 rows share their (query_id, item_id) pair"]),
    ("negative-label", lambda tmp, a: _write(tmp / "d.parquet", a, label=a["label"] - 5), ["rows are outside [0, inf]"]),
    ("string-label", _string_label, ["column 'label' has type string"]),
    ("all-at-once", _everything, ["(4 problems)", "missing columns ['visual_tokens']", "1 rows contain NaN, inf",
                                  "2 rows share", "1 queries have no relevant item"]),
]


@pytest.mark.parametrize("build, fragments", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data_exits_2_with_one_message(tmp_path, tiny_arrays, tiny_model_path, build, fragments):
    path = build(tmp_path, tiny_arrays)
    result = _run(path, "--model", tiny_model_path)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: dataset {path} is invalid (")
    assert result.stderr.count("error:") == 1
    for fragment in fragments:
        assert fragment in result.stderr


def _no_contract_model(tmp, model):
    onnx.save(model, tmp / "bare.onnx")
    return ["--model", tmp / "bare.onnx"]


def _bad_sidecar(tmp, model):
    onnx.save(model, tmp / "bare.onnx")
    (tmp / "c.json").write_text("{not json")
    return ["--model", tmp / "bare.onnx", "--contract", tmp / "c.json"]


def _two_models_one_sidecar(tmp, model):
    onnx.save(model, tmp / "bare.onnx")
    (tmp / "c.json").write_text("{}")
    return ["--model", tmp / "bare.onnx", "--model", tmp / "bare.onnx", "--contract", tmp / "c.json"]


BAD_OPTIONS = [
    ("model-missing", lambda tmp, m: ["--model", tmp / "none.onnx"], "model file"),
    ("model-not-onnx", lambda tmp, m: (tmp / "x.onnx").write_text("hi") and ["--model", tmp / "x.onnx"],
     "x.onnx is not a usable ONNX model"),
    ("model-without-contract", _no_contract_model, "has no 'fusionguard.contract' entry"),
    ("malformed-sidecar", _bad_sidecar, "not valid JSON"),
    ("sidecar-missing", lambda tmp, m: ["--contract", tmp / "none.json"], "sidecar"),
    ("sidecar-with-two-models", _two_models_one_sidecar, "at most one --model"),
    ("unknown-option", lambda tmp, m: ["--frobnicate"], "No such option"),
]


@pytest.mark.parametrize("args, fragment", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_models_and_options_exit_2(tmp_path, tiny_dataset, tiny_model, args, fragment):
    result = _run(tiny_dataset, *args(tmp_path, tiny_model))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fragment in result.stderr


def test_sidecar_alone_and_with_a_model(tmp_path, tiny_dataset, tiny_contract, tiny_model):
    sidecar = tmp_path / "contract.json"
    sidecar.write_text(json.dumps(tiny_contract.to_dict()))
    assert _run(tiny_dataset, "--contract", sidecar).exit_code == 0
    onnx.save(tiny_model, tmp_path / "bare.onnx")
    result = _run(tiny_dataset, "--model", tmp_path / "bare.onnx", "--contract", sidecar)
    assert result.exit_code == 0, result.output


def test_the_data_checked_is_the_models(tmp_path, tiny_dataset, build_model, tiny_contract):
    """A model wanting a different per-row size makes the same file invalid."""
    from fusionguard.contract import ModelContract, TensorSpec, write_contract

    wide = ModelContract(inputs=(TensorSpec("query", "float32", (D + 1,)),), modalities={"text": ("query",)})
    model = build_model(matching_inputs(wide))
    onnx.save(write_contract(model, wide), tmp_path / "wide.onnx")
    result = _run(tiny_dataset, "--model", tmp_path / "wide.onnx")
    assert result.exit_code == 2
    assert f"column 'query': 20 rows do not hold {D + 1} values" in result.stderr


def test_max_label(tiny_dataset):
    result = _run(tiny_dataset, "--max-label", "1")
    assert result.exit_code == 2
    assert "outside [0, 1]" in result.stderr


def test_help_ends_with_an_example():
    result = CliRunner().invoke(cli, ["data", "validate", "--help"])
    assert result.exit_code == 0
    assert "Example: fusionguard data validate" in result.stdout
