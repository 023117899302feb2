"""fusionguard.validation: every problem detected, with its count, and all reported together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.contract import ModelContract, TensorSpec
from fusionguard.validation import ensure_valid, validate_dataset
from fusionguard.errors import DataValidationError

from .conftest import D, LT, make_arrays


def _table(a: dict) -> pa.Table:
    """Arrays (feeds may be lists of per-row lists, with None) -> an Arrow table, written as is."""
    columns = {k: a[k] for k in ("query_id", "item_id", "label") if k in a}
    for name, values in a["feeds"].items():
        rows = [None if r is None else np.asarray(r, dtype=np.float32).reshape(-1).tolist() for r in values]
        columns[name] = pa.array(rows, type=pa.list_(pa.float32()))
    return pa.table(columns)


def _report(tmp_path, a, contracts=(), **kw):
    path = tmp_path / "d.parquet"
    pq.write_table(a if isinstance(a, pa.Table) else _table(a), path)
    return validate_dataset(path, contracts, **kw)


def _duplicate_rows(a):
    return int(pd.DataFrame({"q": a["query_id"], "i": a["item_id"]}).duplicated(keep=False).sum())


def test_valid_dataset(tiny_dataset, tiny_contract):
    report = validate_dataset(tiny_dataset, [tiny_contract])
    assert report.ok, report.problems
    assert (report.n_rows, report.n_queries, dict(report.counts)) == (20, 5, {})
    assert "20 rows, 5 queries" in report.summary()
    assert ensure_valid(tiny_dataset, [tiny_contract]) == report


def _set(feed, rows, value):
    def change(a):
        a["feeds"][feed][list(rows)] = value
    return change


def _drop_rows(keep):
    def change(a):
        for k in ("query_id", "item_id", "label"):
            a[k] = a[k][keep]
        for k in a["feeds"]:
            a["feeds"][k] = a["feeds"][k][keep]
    return change


def _short_query(a):
    """Query 4 keeps only its last row (made relevant so that it is the only problem)."""
    a["label"][19] = 1
    _drop_rows(np.r_[0:16, 19])(a)


def _ragged(a):
    rows = list(a["feeds"]["query"])
    rows[2] = rows[2][:-1]
    rows[7] = np.concatenate([rows[7], [0.0, 1.0]])
    rows[9] = rows[9][:1]
    a["feeds"]["query"] = rows


def _null_row(a):
    rows = list(a["feeds"]["text_tokens"])
    rows[4] = None
    a["feeds"]["text_tokens"] = rows


# (case id, change to the arrays, validate kwargs, count key, expected count(arrays), message fragment)
CASES = [
    ("nan", _set("query", (1, 3), np.nan), {}, "nonfinite:query", lambda a: 2, "2 rows contain NaN"),
    ("nan-several-in-a-row", _set("text_tokens", (6,), np.nan), {}, "nonfinite:text_tokens", lambda a: 1, "1 rows"),
    ("inf", _set("visual_tokens", (5, 11, 12), np.inf), {}, "nonfinite:visual_tokens", lambda a: 3, "NaN, inf"),
    ("-inf", _set("query", (0,), -np.inf), {}, "nonfinite:query", lambda a: 1, "NaN, inf"),
    ("duplicate-pair", lambda a: a["item_id"].__setitem__(1, a["item_id"][0]), {}, "duplicate_pairs",
     _duplicate_rows, "share their (query_id, item_id) pair"),
    ("duplicate-pairs-triple", lambda a: a["item_id"].__setitem__(slice(4, 7), a["item_id"][4]), {},
     "duplicate_pairs", _duplicate_rows, "rows share"),
    ("negative-label", lambda a: a["label"].__setitem__([2, 3], -1), {}, "label_out_of_range", lambda a: 2,
     "outside [0, inf]"),
    ("label-above-max", lambda a: None, {"max_label": 1}, "label_out_of_range",
     lambda a: int((a["label"] > 1).sum()), "outside [0, 1]"),
    ("short-query", _short_query, {}, "short_queries", lambda a: 1, "fewer than two candidates"),
    ("no-relevant", lambda a: a["label"].__setitem__(slice(8, 12), 0), {}, "queries_without_relevant",
     lambda a: 1, "no relevant item"),
    ("ragged-lengths", _ragged, {}, "wrong_length:query", lambda a: 3, f"3 rows do not hold {D} values"),
    ("null-row", _null_row, {}, "null_rows:text_tokens", lambda a: 1, "1 rows are null"),
    ("missing-column", lambda a: a["feeds"].pop("visual_tokens"), {}, "missing_columns", lambda a: 1,
     "missing columns ['visual_tokens']"),
    ("missing-item-id", lambda a: a.pop("item_id"), {}, "missing_columns", lambda a: 1, "missing columns ['item_id']"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_problem_is_detected_with_its_count(tmp_path, tiny_arrays, tiny_contract, case):
    _, change, kwargs, key, count, fragment = case
    change(tiny_arrays)
    report = _report(tmp_path, tiny_arrays, [tiny_contract], **kwargs)
    assert not report.ok
    assert report.counts.get(key) == count(tiny_arrays), report.counts
    assert len(report.problems) == 1, report.problems
    assert fragment in report.problems[0]


def test_wrong_length_against_the_contract(tmp_path, tiny_arrays):
    wide = ModelContract(
        inputs=(TensorSpec("query", "float32", (D + 1,)), TensorSpec("text_tokens", "float32", (LT, D))),
        modalities={"text": ("query", "text_tokens")},
    )
    report = _report(tmp_path, tiny_arrays, [wide])
    assert report.counts == {"wrong_length:query": 20}
    assert f"20 rows do not hold {D + 1} values (the contract's per-row size)" in report.problems[0]


def test_without_contract_every_list_column_is_checked(tmp_path, tiny_arrays):
    _ragged(tiny_arrays)
    tiny_arrays["feeds"]["visual_tokens"][3, 0, 0] = np.nan
    report = _report(tmp_path, tiny_arrays)
    assert report.counts == {"wrong_length:query": 3, "nonfinite:visual_tokens": 1}
    assert "the column's most common length" in report.problems[0]


def test_models_that_disagree_on_an_input(tmp_path, tiny_arrays, tiny_contract):
    other = ModelContract(inputs=(TensorSpec("query", "float32", (D + 2,)),), modalities={"text": ("query",)})
    report = _report(tmp_path, tiny_arrays, [tiny_contract, other])
    assert report.counts["contract_conflicts"] == 1
    assert any("disagree on input 'query'" in p for p in report.problems)


def _typed_table(a, **overrides) -> pa.Table:
    table = _table(a)
    for name, array in overrides.items():
        table = table.set_column(table.schema.get_field_index(name), name, array)
    return table


def test_label_and_input_types(tmp_path, tiny_arrays, tiny_contract):
    labels = tiny_arrays["label"].astype(np.float64)
    labels[[0, 1]] = [0.5, np.inf]
    labels[2] = np.nan
    report = _report(tmp_path, _typed_table(tiny_arrays, label=pa.array(labels, from_pandas=True)), [tiny_contract])
    assert report.counts["label_not_integer"] == 2
    assert report.counts["null:label"] == 1

    as_text = pa.array([str(x) for x in tiny_arrays["label"]])
    report = _report(tmp_path, _typed_table(tiny_arrays, label=as_text, query=as_text), [tiny_contract])
    assert report.counts["bad_type:label"] == 1 and report.counts["bad_type:query"] == 1
    assert not any("missing columns" in p for p in report.problems)  # present, only of the wrong type


def test_null_values_inside_lists_count_as_nonfinite(tmp_path, tiny_arrays, tiny_contract):
    rows = [r.reshape(-1).tolist() for r in tiny_arrays["feeds"]["query"]]
    rows[8][1] = None
    table = _typed_table(tiny_arrays, query=pa.array(rows, type=pa.list_(pa.float32())))
    assert _report(tmp_path, table, [tiny_contract]).counts == {"nonfinite:query": 1}


def test_several_problems_are_reported_together(tmp_path, tiny_arrays, tiny_contract):
    a = tiny_arrays
    a["feeds"]["query"][0, 0] = np.nan
    a["item_id"][1] = a["item_id"][0]
    a["label"][5] = -3  # row 4 stays relevant, so query 1 keeps a relevant item
    a["feeds"].pop("visual_tokens")
    _short_query(a)
    path = tmp_path / "d.parquet"
    pq.write_table(_table(a), path)
    with pytest.raises(DataValidationError) as err:
        ensure_valid(path, [tiny_contract])
    problems = err.value.problems
    assert len(problems) == 5
    message = str(err.value)
    assert message.startswith(f"dataset {path} is invalid (5 problems):")
    for fragment in ("missing columns ['visual_tokens']", "1 rows contain NaN", "2 rows share",
                     "1 rows are outside", "1 queries have fewer than two"):
        assert fragment in message
    assert err.value.exit_code == 2


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_streaming_gives_the_same_report(tmp_path, tiny_arrays, tiny_contract, batch_rows):
    _ragged(tiny_arrays)
    tiny_arrays["label"][5] = -1
    one = _report(tmp_path, tiny_arrays, [tiny_contract])
    streamed = validate_dataset(tmp_path / "d.parquet", [tiny_contract], batch_rows=batch_rows)
    assert streamed == one


def test_validation_reads_only_the_needed_columns(tmp_path, tiny_arrays, tiny_contract, monkeypatch):
    a = tiny_arrays
    table = _table(a).append_column("unused_wide", pa.array([[1.0] * 64] * 20, type=pa.list_(pa.float32())))
    pq.write_table(table, tmp_path / "d.parquet")
    seen: list[list[str]] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["columns"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert validate_dataset(tmp_path / "d.parquet", [tiny_contract]).ok
    assert seen == [["query_id", "item_id", "label", "query", "text_tokens", "visual_tokens"]]


def test_file_level_problems(tmp_path):
    assert validate_dataset(tmp_path / "missing.parquet").problems[0].endswith("does not exist; check the path")
    (tmp_path / "zero.parquet").write_bytes(b"")
    assert "empty file (0 bytes)" in validate_dataset(tmp_path / "zero.parquet").problems[0]
    (tmp_path / "csv.parquet").write_text("query_id,item_id,label\n1,2,3\n")
    report = validate_dataset(tmp_path / "csv.parquet")
    assert not report.ok and "not a readable Parquet file" in report.problems[0]


def test_a_file_without_rows(tmp_path, tiny_contract):
    a = make_arrays(n_queries=0)
    report = _report(tmp_path, a, [tiny_contract])
    assert report.counts == {"empty": 1}
    assert report.problems == ("the dataset has no rows; write at least one query with two candidates",)


row_lists = st.lists(
    st.one_of(st.none(), st.lists(st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, None]), max_size=5)),
    min_size=1, max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(row_lists, st.integers(0, 3))
def test_row_stats_match_a_plain_loop(rows, start):
    """Per-row length and NaN/inf/null count, on a sliced list array, against a loop over rows;
    covers clean arrays (the no-nonfinite fast path) and dirty ones."""
    from fusionguard.validation import _row_stats

    arr = pa.array(rows, type=pa.list_(pa.float32())).slice(min(start, len(rows) - 1))
    lengths, nonfinite = _row_stats(arr)
    for i, row in enumerate(arr.to_pylist()):
        if row is None:
            assert np.isnan(lengths[i]) and nonfinite[i] == 0
        else:
            assert lengths[i] == len(row)
            assert nonfinite[i] == sum(1 for v in row if v is None or not np.isfinite(v))
