"""fusionguard.dataset: Parquet round trip, streaming, column pruning, hashing, input checks."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.contract import ModelContract, TensorSpec
from fusionguard.dataset import ID_COLUMNS, Batch, iter_batches, load_dataset, write_dataset
from fusionguard.source import dataset_sha256
from fusionguard.errors import DataValidationError, InvalidInputError

from .conftest import LT, LV, D, make_arrays


def _write(path, a, **kw):
    return write_dataset(path, a["query_id"], a["item_id"], a["label"], a["feeds"], **kw)


def _concat(batches: list[Batch]) -> Batch:
    return Batch(
        np.concatenate([b.query_id for b in batches]),
        np.concatenate([b.item_id for b in batches]),
        np.concatenate([b.label for b in batches]),
        {k: np.concatenate([b.feeds[k] for b in batches]) for k in batches[0].feeds},
    )


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 20, 65_536])
def test_round_trip_at_several_batch_sizes(tmp_path, tiny_arrays, tiny_contract, batch_rows):
    path = _write(tmp_path / "d.parquet", tiny_arrays)
    batches = list(iter_batches(path, tiny_contract, batch_rows=batch_rows))
    n = len(tiny_arrays["label"])
    assert [len(b) for b in batches] == [min(batch_rows, n - i) for i in range(0, n, batch_rows)]
    got = _concat(batches)
    np.testing.assert_array_equal(got.query_id, tiny_arrays["query_id"])
    np.testing.assert_array_equal(got.item_id, tiny_arrays["item_id"])
    np.testing.assert_array_equal(got.label, tiny_arrays["label"])
    assert got.label.dtype == np.int64
    assert set(got.feeds) == set(tiny_contract.input_names)
    for name, expected in tiny_arrays["feeds"].items():
        assert got.feeds[name].dtype == np.float32
        assert got.feeds[name].shape == expected.shape
        np.testing.assert_array_equal(got.feeds[name], expected)


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(0, 30),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    batch_rows=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(tmp_path_factory, n_rows, shape, batch_rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, *shape)).astype(np.float32)
    tokens = rng.integers(-5, 5, size=(n_rows, 2)).astype(np.int64)
    contract = ModelContract(
        inputs=(TensorSpec("x", "float32", shape), TensorSpec("tok", "int64", (2,))),
        modalities={"text": ("x", "tok")},
    )
    ids = np.arange(n_rows)
    path = write_dataset(tmp_path_factory.mktemp("rt") / "d.parquet", ids, ids, ids % 3, {"x": x, "tok": tokens})
    got = _concat(list(iter_batches(path, contract, batch_rows=batch_rows)))
    assert got.feeds["x"].shape == (n_rows, *shape)
    np.testing.assert_array_equal(got.feeds["x"], x)
    assert got.feeds["tok"].dtype == np.int64
    np.testing.assert_array_equal(got.feeds["tok"], tokens)


def test_string_ids_and_contract_dtype(tmp_path, tiny_arrays):
    a = dict(tiny_arrays)
    a["query_id"] = np.array([f"q{i}" for i in a["query_id"]])
    a["item_id"] = np.array([f"img-{i}.jpg" for i in a["item_id"]], dtype=object)
    path = _write(tmp_path / "d.parquet", a)
    contract = ModelContract(inputs=(TensorSpec("query", "float16", (D,)),), modalities={"text": ("query",)})
    got = load_dataset(path, contract)
    assert got.query_id.dtype == object and list(got.query_id[:2]) == ["q0", "q0"]
    assert list(got.item_id[:2]) == ["img-100.jpg", "img-101.jpg"]
    assert got.feeds["query"].dtype == np.float16
    np.testing.assert_array_equal(got.feeds["query"], a["feeds"]["query"].astype(np.float16))


def test_without_contract_only_requested_inputs_come_back_flat(tiny_dataset, tiny_arrays):
    assert load_dataset(tiny_dataset).feeds == {}
    got = load_dataset(tiny_dataset, inputs=["text_tokens"])
    n = len(tiny_arrays["label"])
    assert list(got.feeds) == ["text_tokens"]
    np.testing.assert_array_equal(got.feeds["text_tokens"], tiny_arrays["feeds"]["text_tokens"].reshape(n, LT * D))


def test_contract_subset_of_inputs(tiny_dataset, tiny_contract, tiny_arrays):
    got = load_dataset(tiny_dataset, tiny_contract, inputs=["visual_tokens"])
    assert list(got.feeds) == ["visual_tokens"]
    assert got.feeds["visual_tokens"].shape == (len(tiny_arrays["label"]), LV, D)


def test_streaming_reads_only_requested_columns(tmp_path, tiny_arrays, tiny_contract, monkeypatch):
    a = tiny_arrays
    n = len(a["label"])
    # A wide column no reader asks for: it must never be read.
    path = _write(tmp_path / "d.parquet", a, extra={"unused_wide": np.ones((n, 64), np.float32)})
    calls: list[dict] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        for batch in original(self, *args, **kwargs):
            calls[-1].setdefault("seen", []).append(batch.schema.names)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    batches = list(iter_batches(path, tiny_contract, batch_rows=6, inputs=["query"]))
    assert len(calls) == 1
    assert calls[0]["columns"] == [*ID_COLUMNS, "query"]
    assert calls[0]["batch_size"] == 6
    assert all(names == [*ID_COLUMNS, "query"] for names in calls[0]["seen"])
    assert max(len(b) for b in batches) <= 6


def test_writes_row_groups_so_large_files_stream(tmp_path):
    n = 70_000  # more than one row group of 65,536 rows
    ids = np.arange(n)
    path = write_dataset(tmp_path / "d.parquet", ids // 10, ids, np.zeros(n, np.int64), {"x": np.zeros((n, 1), np.float32)})
    assert pq.ParquetFile(path).metadata.num_row_groups == 2


def test_fixed_size_and_large_list_columns_are_read(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = pa.table({
        "query_id": pa.array([0, 0, 1, 1]),
        "item_id": pa.array([0, 1, 0, 1]),
        "label": pa.array([1, 0, 1, 0]),
        "fixed": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3),
        "large": pa.LargeListArray.from_arrays(pa.array(np.arange(5) * 3), pa.array(values.reshape(-1))),
    })
    pq.write_table(table, tmp_path / "d.parquet")
    contract = ModelContract(inputs=(TensorSpec("fixed", "float32", (3,)), TensorSpec("large", "float32", (3,))),
                             modalities={"text": ("fixed",), "visual": ("large",)})
    got = load_dataset(tmp_path / "d.parquet", contract)
    np.testing.assert_array_equal(got.feeds["fixed"], values)
    np.testing.assert_array_equal(got.feeds["large"], values)


def test_empty_dataset_has_the_right_shapes(tmp_path, tiny_contract):
    a = make_arrays(n_queries=0)
    got = load_dataset(_write(tmp_path / "d.parquet", a), tiny_contract)
    assert len(got) == 0
    assert got.feeds["text_tokens"].shape == (0, LT, D)


def test_extra_columns_are_stored(tmp_path, tiny_arrays):
    n = len(tiny_arrays["label"])
    split = np.array(["train", "test"] * (n // 2))
    path = _write(tmp_path / "d.parquet", tiny_arrays, extra={"split": split})
    assert pq.read_table(path, columns=["split"]).column("split").to_pylist() == list(split)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda a: a.update(item_id=a["item_id"][:-1]), "item_id has shape"),
        (lambda a: a.update(label=a["label"].reshape(-1, 1)), "label has shape"),
        (lambda a: a.update(label=a["label"] + 0.5), "non-integer"),
        (lambda a: a["feeds"].update(label=a["feeds"]["query"]), "clash"),
    ],
)
def test_write_rejects_bad_arrays_before_writing(tmp_path, tiny_arrays, change, expected):
    change(tiny_arrays)
    path = tmp_path / "d.parquet"
    with pytest.raises(DataValidationError, match=expected):
        _write(path, tiny_arrays)
    assert not path.exists()


def test_write_rejects_a_feed_with_the_wrong_row_count(tmp_path, tiny_arrays):
    tiny_arrays["feeds"]["query"] = tiny_arrays["feeds"]["query"][:-2]
    with pytest.raises(InvalidInputError, match="axis 0 must count the 20 rows"):
        _write(tmp_path / "d.parquet", tiny_arrays)


def test_integral_float_labels_are_stored_as_int64(tmp_path, tiny_arrays):
    tiny_arrays["label"] = tiny_arrays["label"].astype(np.float64)
    path = _write(tmp_path / "d.parquet", tiny_arrays)
    assert pq.read_schema(path).field("label").type == pa.int64()


def test_read_errors(tmp_path, tiny_dataset, tiny_contract):
    with pytest.raises(InvalidInputError, match="does not exist"):
        list(iter_batches(tmp_path / "missing.parquet"))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        list(iter_batches(tmp_path / "text.parquet"))
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty file"):
        list(iter_batches(tmp_path / "zero.parquet"))
    with pytest.raises(InvalidInputError, match="not in the model contract"):
        list(iter_batches(tiny_dataset, tiny_contract, inputs=["pixels"]))
    with pytest.raises(DataValidationError, match=r"missing columns \['pixels'\]"):
        list(iter_batches(tiny_dataset, inputs=["pixels"]))
    wrong = ModelContract(inputs=(TensorSpec("query", "float32", (D + 1,)),), modalities={"text": ("query",)})
    with pytest.raises(DataValidationError, match=r"20 of 20 rows do not hold 5 values"):
        list(iter_batches(tiny_dataset, wrong))
    with pytest.raises(InvalidInputError, match="batch_rows must be positive"):
        list(iter_batches(tiny_dataset, batch_rows=0))


def test_dataset_sha256_matches_hashlib(tiny_dataset, tmp_path, tiny_arrays):
    expected = hashlib.sha256(tiny_dataset.read_bytes()).hexdigest()
    assert dataset_sha256(tiny_dataset) == expected
    assert dataset_sha256(tiny_dataset, chunk_bytes=7) == expected
    tiny_arrays["label"][0] += 1
    other = _write(tmp_path / "other.parquet", tiny_arrays)
    assert dataset_sha256(other) != expected


def test_importing_dataset_does_not_import_great_expectations():
    code = "import sys, fusionguard.dataset; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
