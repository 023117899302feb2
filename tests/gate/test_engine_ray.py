"""The Ray engine gives the local engine's per-query values and verdict, on a local Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fusionguard.scorer import Scorer  # noqa: E402

from gate.engine import EngineConfig  # noqa: E402
from gate.policy import load_policy  # noqa: E402
from gate.runner import run_gate  # noqa: E402
from gate.streaming import read_ids, stream_baseline, stream_measures  # noqa: E402

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
