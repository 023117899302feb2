"""The Ray engine gives the local engine's per-query values and verdict, on a local Ray.

Ray Data reads the spans and the actors reduce them (gate/engine_ray.py); the data comes as one
file with small row groups, as a directory of files and as a file:// URI. The gate's equality and
the error path run in the default suite (one local Ray, ~20 s); the rest are marked slow."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fusionguard.scorer import Scorer  # noqa: E402

from fusionguard.gate.engine import EngineConfig  # noqa: E402
from fusionguard.gate.policy import load_policy  # noqa: E402
from fusionguard.gate.runner import run_gate  # noqa: E402
from fusionguard.gate.streaming import read_ids, stream_baseline, stream_measures  # noqa: E402

from .test_streaming import _interleaved, _policy, ragged  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _row_groups(src, dst, size: int = 37):
    """The same rows in many small row groups (readers that reorder row groups get caught)."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(src), dst, row_group_size=size)
    return dst


def test_ray_gate_equals_the_local_gate(local_ray, toys, ragged, tmp_path):  # noqa: F811
    policy = _policy(tmp_path, "permute")
    ragged = _row_groups(ragged, tmp_path / "row_groups.parquet")
    local = run_gate(toys.fusion, ragged, tmp_path / "local", baseline=toys.v1, policy=policy,
                     engine=EngineConfig(workers=1))
    remote = run_gate(toys.fusion, ragged, tmp_path / "ray", baseline=toys.v1, policy=policy,
                      engine=EngineConfig("ray", workers=2))
    assert remote.exit_code == local.exit_code
    np.testing.assert_array_equal(remote.measures.ndcg, local.measures.ndcg)
    np.testing.assert_array_equal(remote.baseline_ndcg, local.baseline_ndcg)
    r1 = json.loads((tmp_path / "local" / "report.json").read_text())
    r2 = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert r1["checks"] == r2["checks"]
    assert (tmp_path / "local" / "profile.json").read_text() == (tmp_path / "ray" / "profile.json").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero", "mean"])
def test_ray_measures_equal_local_for_every_strategy(local_ray, toys, ragged, tmp_path, strategy):  # noqa: F811
    policy = load_policy(_policy(tmp_path, strategy))
    cand, base = Scorer(toys.fusion, device="cpu"), Scorer(toys.v1, device="cpu")
    streamed = read_ids(ragged)
    a, fa = stream_measures(cand, ragged, streamed, policy, engine=EngineConfig(workers=1), features=True)
    b, fb = stream_measures(cand, ragged, streamed, policy, engine=EngineConfig("ray", workers=2), features=True)
    for name in ("ndcg", "ndcg_visual_masked", "visual_drop", "phi_text", "visual_share_per_query"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.attention.mass_per_head, b.attention.mass_per_head)
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name])
    np.testing.assert_array_equal(stream_baseline(base, ragged, streamed, policy, engine=EngineConfig("ray")),
                                  stream_baseline(base, ragged, streamed, policy, engine=EngineConfig(workers=1)))


@pytest.mark.slow
def test_ray_engine_refuses_a_split_query(local_ray, toys, tmp_path):
    from fusionguard.streaming import UnsortedDataError

    unsorted = _interleaved(toys.data, tmp_path / "unsorted.parquet")
    cand = Scorer(toys.fusion, device="cpu")
    with pytest.raises(UnsortedDataError):
        stream_measures(cand, unsorted, read_ids(unsorted), load_policy(toys.policy), engine=EngineConfig("ray"))


def _as_directory(src, folder, cuts=(0, 61, 200, 333)):
    """The same rows as three files (row groups of 23 rows) in a directory; the cuts fall inside
    queries, so a batch spans files."""
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    folder.mkdir()
    bounds = [*cuts, table.num_rows]
    for i, (a, z) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(a, z - a), folder / f"part-{i:02d}.parquet", row_group_size=23)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("form", ["directory", "uri"])
def test_ray_reads_a_directory_or_uri_in_the_actors(local_ray, toys, ragged, tmp_path, form):  # noqa: F811
    policy = load_policy(_policy(tmp_path, "permute"))
    cand = Scorer(toys.fusion, device="cpu")
    folder = _as_directory(ragged, tmp_path / "parts")
    data = folder.as_uri() if form == "uri" else folder
    a, fa = stream_measures(cand, ragged, read_ids(ragged), policy, engine=EngineConfig(workers=1), features=True)
    b, fb = stream_measures(cand, data, read_ids(data), policy, engine=EngineConfig("ray", workers=2), features=True)
    for name in ("ndcg", "ndcg_visual_masked", "ndcg_text_masked", "scores", "phi_visual", "visual_share_per_query"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name])


@pytest.mark.slow
def test_ray_refuses_a_query_split_over_two_files(local_ray, toys, tmp_path):
    """Each file is grouped, but one query has rows in both: refused before any actor starts."""
    from fusionguard.errors import InvalidInputError
    from fusionguard.streaming import UnsortedDataError

    unsorted = _interleaved(toys.data, tmp_path / "unsorted.parquet")  # first halves, then second halves
    n = len(read_ids(unsorted).groups.order)
    folder = _as_directory(unsorted, tmp_path / "parts", cuts=(0, n // 2))
    cand = Scorer(toys.fusion, device="cpu")
    with pytest.raises(UnsortedDataError, match="fusionguard data group") as err:
        stream_measures(cand, folder, read_ids(folder), load_policy(toys.policy), engine=EngineConfig("ray"))
    assert isinstance(err.value, InvalidInputError) and err.value.exit_code == 2


def test_an_actor_error_comes_back_as_itself(local_ray, toys, ragged, tmp_path):  # noqa: F811
    """A file without a model input: the read task raises DataValidationError inside Ray Data's
    actor, and the driver raises it as itself (exit 2, its message), not Ray's wrapper."""
    import pyarrow.parquet as pq

    from fusionguard.errors import DataValidationError

    cand = Scorer(toys.fusion, device="cpu")
    dropped = tmp_path / "no_visual.parquet"
    table = pq.read_table(ragged)
    name = cand.contract.input_names[-1]
    pq.write_table(table.drop_columns([name]), dropped)
    with pytest.raises(DataValidationError, match=f"missing columns \\['{name}'\\]") as err:
        stream_measures(cand, dropped, read_ids(dropped), load_policy(_policy(tmp_path, "zero")),
                        engine=EngineConfig("ray", workers=2))
    assert err.value.exit_code == 2


def test_the_ray_data_context_is_restored():
    """The run's DataContext settings (one block per read task, no Ray bars) do not leak."""
    from fusionguard.raydata import data_context

    ctx = ray.data.DataContext.get_current()
    before = (ctx.target_max_block_size, ctx.enable_progress_bars, ctx.execution_options.preserve_order)
    with data_context():
        assert ctx.target_max_block_size is None and ctx.execution_options.preserve_order
    assert (ctx.target_max_block_size, ctx.enable_progress_bars, ctx.execution_options.preserve_order) == before
