"""metrics.ranks: the measures' ranking as 1-based ranks in the caller's row order."""

from __future__ import annotations

import numpy as np
import pytest

from fusionguard.metrics import QueryGroups, ranks


def _loop_ranks(q, item, s):
    out = np.empty(len(q), dtype=np.int64)
    for query in np.unique(q):
        rows = np.flatnonzero(q == query)
        order = sorted(rows, key=lambda r: (-s[r], -item[r]))  # score desc, ties by item_id desc
        for rank, r in enumerate(order, 1):
            out[r] = rank
    return out


@pytest.mark.parametrize("skewed", [False, True])
def test_ranks_match_a_plain_loop_with_ties_and_shuffled_rows(skewed):
    rng = np.random.default_rng(3)
    sizes = [1, 200, 2, 3] if skewed else [5, 7, 6, 5]
    q = np.repeat(np.arange(len(sizes)), sizes)
    item = np.concatenate([rng.permutation(n) for n in sizes])
    s = rng.integers(0, 3, q.shape[0]).astype(float)  # many ties
    perm = rng.permutation(q.shape[0])
    q, item, s = q[perm], item[perm], s[perm]
    got = ranks(QueryGroups.from_arrays(q, item, np.zeros(q.shape[0])), s)
    np.testing.assert_array_equal(got, _loop_ranks(q, item, s))
