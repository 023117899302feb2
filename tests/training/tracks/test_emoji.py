"""The emoji track on a tiny generated package layout with stand-in encoders (no npm, no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.errors import ConfigError, InvalidInputError
from training.tracks.emoji import (COLOURS, EmojiConfig, EmojiFeatures, build_track, has_colour, read_catalogue,
                                   strip_colours, zero_shot)

PIL = pytest.importorskip("PIL.Image")

RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
ENTRIES = [("2764", "red heart", ["heart", "love", "red"]), ("1F499", "blue heart", ["blue", "heart"]),
           ("1F49A", "green heart", ["green", "heart"]), ("1F49B", "yellow heart", ["heart", "yellow"]),
           ("1F534", "red circle", ["circle", "geometric", "red"]), ("1F535", "blue circle", ["blue", "circle"]),
           ("1F7E2", "green circle", ["circle", "green"]), ("1F34C", "banana", ["fruit", "banana"]),
           ("1F697", "automobile", ["car"]), ("1F436", "dog face", ["dog", "pet"]),
           ("1F9FF", "nazar amulet", ["charm"])]  # the last one has no picture: not an item


def _packages(tmp_path):
    npm = tmp_path / "cache" / "npm"
    img = npm / "twitter" / "img" / "twitter" / "64"
    img.mkdir(parents=True)
    (npm / "emojibase" / "en").mkdir(parents=True)
    data, mapping = [], []
    for i, (code, label, tags) in enumerate(ENTRIES):
        data.append({"label": label, "hexcode": code, "tags": tags, "group": 0, "order": i})
        if code == "1F9FF":
            continue
        colour = next((c for c in RGB if c in label), None)
        rgb = RGB[colour] if colour else ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        PIL.new("RGBA", (8, 8), rgb + (255,)).save(img / f"{code.lower()}.png")
        mapping.append({"unified": code, "non_qualified": None, "image": f"{code.lower()}.png", "has_img_twitter": True})
    (npm / "emojibase" / "en" / "data.json").write_text(json.dumps(data))
    (npm / "twitter" / "emoji.json").write_text(json.dumps(mapping))
    return npm


def _bag_of_words(texts):
    vocab = sorted({w for t in texts for w in t.replace(":", " ").replace(",", " ").split()} | {"heart", "circle"} | set(COLOURS))
    out = np.zeros((len(texts), 64))
    for r, t in enumerate(texts):
        for w in t.replace(":", " ").replace(",", " ").split():
            out[r, hash(w) % 64 if w not in vocab else vocab.index(w) % 64] += 1
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _mean_colour(paths):
    from training.tracks.emoji import load_png_rgb

    return np.stack([load_png_rgb(p).reshape(-1, 3).mean(0) for p in paths]).astype(np.float32) / 255 - 0.4


@pytest.mark.parametrize("text, want", [("blue heart", "heart"), ("black medium-small square", "medium-small square"),
                                        ("man: red hair", "man: hair"), ("Red", ""), ("reddish bird", "reddish bird")])
def test_strip_colours(text, want):
    assert strip_colours(text) == want


def test_catalogue_hides_every_colour_word_from_item_text(tmp_path):
    cat = read_catalogue(_packages(tmp_path))
    assert len(cat.labels) == 10  # the entry without a picture is dropped
    assert [cat.labels[i] for i in cat.queries] == [e[1] for e in ENTRIES[:7]]
    assert not any(has_colour(t) for t in cat.item_texts)
    heart_texts = {cat.item_texts[i] for i in cat.queries[1:4]}
    assert heart_texts == {"heart: heart"}  # blue/green/yellow heart: the text cannot tell them apart
    assert cat.item_texts[0] == "heart: heart, love"


def test_zero_shot_rows_cover_the_catalogue(tmp_path):
    _packages(tmp_path)
    track = build_track(tmp_path / "cache", EmojiConfig(folds=2), text=_bag_of_words, image=_mean_colour, fetch=False)
    assert (track.n_items, track.n_queries) == (10, 7)
    s = track.summary
    for m in ("text", "visual", "sum", "random"):
        assert 0 <= s[m]["ndcg@10"] <= 1
    assert s["random"]["mrr"] == pytest.approx(np.mean(1 / np.arange(1, 11)))
    assert set(s["paired"]) == {"sum-text", "sum-visual"}
    saved = json.loads((tmp_path / "cache" / "emoji_zero_shot.json").read_text())
    assert saved["summary"]["text"] == s["text"]


def test_probe_is_cross_fitted(tmp_path):
    """A query's visual score does not change when its own emoji's picture (in the probe's training data) changes."""
    cat = read_catalogue(_packages(tmp_path))
    rng = np.random.default_rng(0)
    feats = EmojiFeatures(rng.standard_normal((10, 6)), rng.standard_normal((10, 6)), rng.standard_normal((10, 5)),
                          rng.standard_normal((7, 6)))
    cfg = EmojiConfig(folds=3, seed=1)
    base = zero_shot(cat, feats, cfg).scores["visual"].reshape(7, 10)
    fold = np.random.default_rng(1).permutation(10) % 3
    q0_item = cat.queries[0]
    changed = EmojiFeatures(feats.item_text, feats.label.copy(), feats.image, feats.query)
    changed.label[q0_item] += 5.0  # only enters probes of the other folds
    again = zero_shot(cat, changed, cfg).scores["visual"].reshape(7, 10)
    same_fold = [j for j, i in enumerate(cat.queries) if fold[i] == fold[q0_item]]
    np.testing.assert_allclose(again[same_fold], base[same_fold])
    assert not np.allclose(again, base)


def test_bad_input(tmp_path):
    with pytest.raises(InvalidInputError, match="missing"):
        read_catalogue(tmp_path / "nothing")
    cat = read_catalogue(_packages(tmp_path))
    feats = EmojiFeatures(np.zeros((10, 2)), np.zeros((10, 2)), np.zeros((10, 2)), np.zeros((7, 2)))
    with pytest.raises(ConfigError):
        zero_shot(cat, feats, EmojiConfig(folds=1))
