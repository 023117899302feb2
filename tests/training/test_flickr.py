"""The Flickr8k importer on small synthetic arrays in the real file layout (never the real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.dataset import load_dataset
from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.training.flickr import FlickrConfig, import_flickr, mine_negatives
from fusionguard.training.zero_shot import load_zero_shot


def _write_split(folder, n, rng):
    folder.mkdir(parents=True)
    ids = sorted(f"{1000 + i}_x.jpg" for i in range(n))
    (folder / "image_ids.json").write_text(json.dumps(ids))
    (folder / "captions.json").write_text(json.dumps([[f"caption {k} of {i}" for k in range(5)] for i in ids]))
    img = rng.standard_normal((n, 12)).astype(np.float32) * 10
    # captions share a per-image topic, so text and image both carry signal
    topic = rng.standard_normal((n, 1, 6))
    mini = topic + 0.7 * rng.standard_normal((n, 5, 6))
    mini /= np.linalg.norm(mini, axis=-1, keepdims=True)
    np.save(folder / "clip_image.npy", img)
    txt = rng.standard_normal((n, 12)).astype(np.float32) * 8
    np.save(folder / "clip_text_caption0.npy", txt)
    np.save(folder / "minilm_captions.npy", mini.astype(np.float16))
    return img, txt, mini.astype(np.float16).astype(np.float32)


@pytest.fixture()
def root(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {s: _write_split(tmp_path / "flickr" / s, 20, rng) for s in ("val", "test")}
    return tmp_path / "flickr", arrays


CFG = FlickrConfig(dim=5, n_candidates=4, pool_images=5, queries_per_image=5, es_fraction=0.25, seed=1)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_import_schema_pools_and_held_out_caption(root, tmp_path):
    folder, arrays = root
    result = import_flickr(folder, tmp_path / "out", CFG)
    assert result.queries == {"train": 75, "val": 25, "test": 100}  # 15/5/20 images x 5 captions
    meta = json.loads((tmp_path / "out" / "flickr.json").read_text())
    assert meta["pools"] == {"train": 3, "val": 1, "test": 4} and meta["input_dims"]["lt"] == 4
    test = load_dataset(tmp_path / "out" / "test.parquet", inputs=["query", "text_tokens", "visual_tokens"])
    img, _, mini = arrays["test"]
    rng = np.random.default_rng(1)
    p_text = (rng.standard_normal((6, 5)) / np.sqrt(5)).astype(np.float32)
    p_img = (rng.standard_normal((12, 5)) / np.sqrt(5)).astype(np.float32)
    query = test.feeds["query"].reshape(-1, 5)
    text = test.feeds["text_tokens"].reshape(-1, 4, 5)
    vis = test.feeds["visual_tokens"].reshape(-1, 5)
    positions = []
    for q in np.unique(test.query_id):
        rows = np.flatnonzero(test.query_id == q)
        assert len(rows) == 4 and test.label[rows].sum() == 1
        items = test.item_id[rows]
        assert len(np.unique(items)) == 4
        rel = int(items[test.label[rows] == 1][0])
        positions.append(int(np.flatnonzero(test.label[rows] == 1)[0]))
        # which caption of `rel` is the query: exactly one matches, and it is absent from every item's text
        k = [j for j in range(5) if np.allclose(query[rows[0]], _unit(mini[rel, j]) @ p_text, atol=1e-5)]
        assert len(k) == 1
        others = [j for j in range(5) if j != k[0]]
        for r, item in zip(rows, items):
            np.testing.assert_allclose(text[r], _unit(mini[item, others]) @ p_text, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(vis[r], _unit(img[item]) @ p_img, rtol=1e-5, atol=1e-5)
    assert len(set(positions)) > 1  # the relevant item is not always in the same place


def test_negatives_are_mined_neutrally():
    rng = np.random.default_rng(0)
    text_sim = np.array([9.0, 5, 4, 3, 2, 1, 0, -1, -2, -3])
    image_sim = np.array([9.0, 0, 0, 0, 0, 0, 0, 8, 7, 5])
    neg = mine_negatives(text_sim, image_sim, relevant=0, n_neg=7, rng=rng)
    assert 0 not in neg and len(set(neg.tolist())) == 7
    assert set(neg[:2]) == {1, 2} and set(neg[2:4]) == {7, 8}  # two text-nearest, two image-nearest, three random
    # image-nearest skips what text already took
    neg = mine_negatives(text_sim, np.array([9.0, 8, 7, 6, 0, 0, 0, 0, 0, 0]), relevant=0, n_neg=6, rng=rng)
    assert set(neg[:2]) == {1, 2} and set(neg[2:4]) == {3, 4}


def test_zero_shot_rows_are_written_and_the_probe_sees_only_training_images(root, tmp_path):
    folder, arrays = root
    result = import_flickr(folder, tmp_path / "out", CFG)
    for split in ("train", "val", "test"):
        zs = load_zero_shot(tmp_path / "out", split)
        data = load_dataset(tmp_path / "out" / f"{split}.parquet", inputs=[])
        np.testing.assert_array_equal(zs.query_id, data.query_id)
        np.testing.assert_array_equal(zs.item_id, data.item_id)
        assert set(zs.scores) == {"text", "visual", "sum"}
    s = result.zero_shot["test"]
    for m in ("text", "visual", "sum", "random"):
        assert 0 <= s[m]["ndcg@10"] <= 1
    assert 0 < s["paired"]["sum-text"]["p_value"] <= 1
    # text carries signal by construction of the fixture: far above random
    assert s["text"]["mrr"] > s["random"]["mrr"] + 0.1
    # changing the early-stopping images' features changes nothing on the training split: the
    # probe is fitted on training images only
    es_items = np.unique(load_dataset(tmp_path / "out" / "val.parquet", inputs=[]).item_id)
    img = np.load(folder / "val" / "clip_image.npy")
    img[es_items] = np.random.default_rng(9).standard_normal(img[es_items].shape)
    np.save(folder / "val" / "clip_image.npy", img)
    again = import_flickr(folder, tmp_path / "out2", CFG)
    assert again.zero_shot["train"]["visual"] == result.zero_shot["train"]["visual"]
    assert again.zero_shot["val"]["visual"] != result.zero_shot["val"]["visual"]


def test_train_and_early_stopping_images_are_disjoint(root, tmp_path):
    folder, _ = root
    import_flickr(folder, tmp_path / "out", CFG)
    train = load_dataset(tmp_path / "out" / "train.parquet", inputs=[])
    val = load_dataset(tmp_path / "out" / "val.parquet", inputs=[])
    assert not set(train.item_id.tolist()) & set(val.item_id.tolist())
    assert not set(train.query_id.tolist()) & set(val.query_id.tolist())


def test_problems_are_reported(root, tmp_path):
    folder, _ = root
    with pytest.raises(ConfigError) as err:
        import_flickr(folder, tmp_path / "o", FlickrConfig(n_candidates=1, queries_per_image=6, pool_images=0))
    assert len(err.value.problems) >= 3
    with pytest.raises(InvalidInputError, match="pool_images"):
        import_flickr(folder, tmp_path / "o", FlickrConfig(dim=4, n_candidates=4, pool_images=18))
    (folder / "test" / "clip_image.npy").unlink()
    with pytest.raises(InvalidInputError, match="clip_image.npy"):
        import_flickr(folder, tmp_path / "o", CFG)
