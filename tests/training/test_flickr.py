"""The Flickr8k importer on small synthetic arrays in the real file layout (never the real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.dataset import load_dataset
from fusionguard.errors import ConfigError, InvalidInputError
from training.flickr import FlickrConfig, import_flickr


def _write_split(folder, n, rng):
    folder.mkdir(parents=True)
    ids = sorted(f"{1000 + i}_x.jpg" for i in range(n))
    (folder / "image_ids.json").write_text(json.dumps(ids))
    (folder / "captions.json").write_text(json.dumps([[f"caption {k} of {i}" for k in range(5)] for i in ids]))
    img = rng.standard_normal((n, 12)).astype(np.float32) * 10
    mini = rng.standard_normal((n, 5, 6))
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


def test_import_schema_and_candidates(root, tmp_path):
    folder, arrays = root
    cfg = FlickrConfig(dim=5, n_candidates=6, hard_negatives=2, queries_per_image=2, es_fraction=0.25, seed=1)
    result = import_flickr(folder, tmp_path / "out", cfg)
    assert result.queries == {"train": 30, "val": 10, "test": 40}  # 15/5 val images x 2 captions, 20 test x 2
    test = load_dataset(tmp_path / "out" / "test.parquet", inputs=["query", "text_tokens", "visual_tokens"])
    img, txt, mini = arrays["test"]
    qids = np.unique(test.query_id)
    for q in qids:
        rows = test.query_id == q
        assert rows.sum() == 6 and test.label[rows].sum() == 1  # one relevant image among 6 candidates
        assert len(np.unique(test.item_id[rows])) == 6
    # plain reference of one query: caption #k of image i, projected with the importer's seeded matrices
    rng = np.random.default_rng(1)
    p_text = (rng.standard_normal((6, 5)) / np.sqrt(5)).astype(np.float32)
    p_img = (rng.standard_normal((12, 5)) / np.sqrt(5)).astype(np.float32)
    first = qids.min()
    rows = test.query_id == first
    relevant = int(test.item_id[rows][test.label[rows] == 1][0])
    assert relevant == 0  # test queries go image by image, captions #1..#k
    cap = mini[0, 1] / np.linalg.norm(mini[0, 1])
    np.testing.assert_allclose(test.feeds["query"].reshape(-1, 5)[rows][0], cap @ p_text, rtol=1e-5, atol=1e-6)
    for item, t, v in zip(test.item_id[rows], test.feeds["text_tokens"].reshape(-1, 2, 5)[rows], test.feeds["visual_tokens"].reshape(-1, 5)[rows]):
        c0 = mini[item, 0] / np.linalg.norm(mini[item, 0])
        np.testing.assert_allclose(t[0], c0 @ p_text, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t[1], (txt[item] / np.linalg.norm(txt[item])) @ p_img, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, (img[item] / np.linalg.norm(img[item])) @ p_img, rtol=1e-5, atol=1e-6)
    # the hard negatives are the images whose caption #0 is nearest to the query caption
    sims = np.array([(mini[j, 0] / np.linalg.norm(mini[j, 0])) @ cap for j in range(20)])
    sims[0] = -np.inf
    assert set(np.argsort(-sims)[:2]) <= set(test.item_id[rows].tolist())


def test_train_and_early_stopping_images_are_disjoint(root, tmp_path):
    folder, _ = root
    import_flickr(folder, tmp_path / "out", FlickrConfig(dim=4, n_candidates=4, hard_negatives=1))
    train = load_dataset(tmp_path / "out" / "train.parquet", inputs=[])
    val = load_dataset(tmp_path / "out" / "val.parquet", inputs=[])
    assert not set(train.item_id.tolist()) & set(val.item_id.tolist())
    assert not set(train.query_id.tolist()) & set(val.query_id.tolist())


def test_problems_are_reported(root, tmp_path):
    folder, _ = root
    with pytest.raises(ConfigError) as err:
        import_flickr(folder, tmp_path / "o", FlickrConfig(n_candidates=1, queries_per_image=5))
    assert len(err.value.problems) >= 2
    (folder / "test" / "clip_image.npy").unlink()
    with pytest.raises(InvalidInputError, match="clip_image.npy"):
        import_flickr(folder, tmp_path / "o", FlickrConfig(dim=4, n_candidates=4, hard_negatives=1))
