"""The emoji track on a tiny generated package layout with stand-in encoders (no npm, no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.training.tracks.emoji import (COLOURS, LATE_WEIGHTS, SPLITS, EmojiConfig, EmojiFeatures, build_track, choose_weight,
                                   has_colour, item_ids, load_features, read_catalogue, strip_colours, strip_tones,
                                   zero_shot)
from fusionguard.training.zero_shot import zscore_within

PIL = pytest.importorskip("PIL.Image")

RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20),
       "orange": (240, 140, 20)}
TONE_RGB = [(250, 220, 190), (225, 185, 150), (190, 140, 100), (140, 95, 60), (90, 60, 40)]
ENTRIES = [("2764", "red heart", ["heart", "love", "red"]), ("1F499", "blue heart", ["blue", "heart"]),
           ("1F49A", "green heart", ["green", "heart"]), ("1F49B", "yellow heart", ["heart", "yellow"]),
           ("1F534", "red circle", ["circle", "geometric", "red"]), ("1F535", "blue circle", ["blue", "circle"]),
           ("1F7E2", "green circle", ["circle", "green"]), ("1F7E5", "red square", ["square"]),
           ("1F7E6", "blue square", ["square"]), ("1F4D8", "blue book", ["book"]), ("1F4D9", "orange book", ["book"]),
           ("1F34C", "banana", ["fruit", "banana"]), ("1F697", "automobile", ["car"]), ("1F436", "dog face", ["dog", "pet"]),
           ("1F44B", "waving hand", ["hand", "wave"]), ("1F44D", "thumbs up", ["hand", "up"]),
           ("1F3FB", "light skin tone", ["light", "skin", "tone"]),  # a bare swatch: no family, not an item
           ("1F9FF", "nazar amulet", ["charm"])]  # no picture: not an item
SKINS = ("1F44B", "1F44D")  # these get the five skin-tone variants


def _png(path, rgb):
    PIL.new("RGBA", (8, 8), rgb + (255,)).save(path)


def _packages(tmp_path):
    npm = tmp_path / "cache" / "npm"
    img = npm / "twitter" / "img" / "twitter" / "64"
    img.mkdir(parents=True)
    (npm / "emojibase" / "en").mkdir(parents=True)
    data, mapping = [], []
    for i, (code, label, tags) in enumerate(ENTRIES):
        entry = {"label": label, "hexcode": code, "tags": tags, "group": 0, "order": i}
        data.append(entry)
        if code == "1F9FF":
            continue
        colour = next((c for c in RGB if c in label), None)
        _png(img / f"{code.lower()}.png", RGB[colour] if colour else ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        m = {"unified": code, "non_qualified": None, "image": f"{code.lower()}.png", "has_img_twitter": True}
        if code in SKINS:
            tones = ("light", "medium-light", "medium", "medium-dark", "dark")
            entry["skins"] = [{"label": f"{label}: {t} skin tone", "hexcode": f"{code}-1F3F{'BCDEF'[k]}", "tone": k + 1}
                              for k, t in enumerate(tones)]
            entry["skins"].append({"label": f"{label}: light skin tone, dark skin tone", "hexcode": f"{code}-1F3FB-1F3FF",
                                   "tone": [1, 5]})  # two tones: not an item
            m["skin_variations"] = {}
            for k, sk in enumerate(entry["skins"][:5]):
                name = f"{sk['hexcode'].lower()}.png"
                _png(img / name, TONE_RGB[k])
                m["skin_variations"][sk["hexcode"].split("-", 1)[1]] = {"unified": sk["hexcode"], "image": name,
                                                                         "has_img_twitter": True}
        mapping.append(m)
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
    from fusionguard.training.tracks.emoji import load_png_rgb

    return np.stack([load_png_rgb(p).reshape(-1, 3).mean(0) for p in paths]).astype(np.float32) / 255 - 0.4


@pytest.mark.parametrize("text, want", [("blue heart", "heart"), ("black medium-small square", "medium-small square"),
                                        ("man: red hair", "man: hair"), ("Red", ""), ("reddish bird", "reddish bird")])
def test_strip_colours(text, want):
    assert strip_colours(text) == want


@pytest.mark.parametrize("text, want", [("waving hand: medium-dark skin tone", "waving hand"),
                                        ("man: light skin tone, curly hair", "man: curly hair"),
                                        ("dark skin tone", ""), ("medium star", "medium star")])
def test_strip_tones(text, want):
    assert strip_tones(text) == want


def _catalogue(tmp_path):
    return read_catalogue(_packages(tmp_path))


def test_catalogue_hides_every_colour_and_tone_from_item_text(tmp_path):
    cat = _catalogue(tmp_path)
    assert len(cat.labels) == 16 + 10  # 16 pictured entries (no swatch, no amulet) + 2 x 5 single-tone variants
    assert [cat.labels[i] for i, k in zip(cat.queries, cat.kinds) if k == "colour"] == [e[1] for e in ENTRIES[:11]]
    tones = [cat.labels[i] for i, k in zip(cat.queries, cat.kinds) if k == "tone"]
    assert len(tones) == 10 and tones[0] == "waving hand: light skin tone"
    assert not any(has_colour(t) or "skin tone" in t for t in cat.item_texts)
    assert {cat.item_texts[i] for i in cat.queries[1:4]} == {"heart: heart"}  # the text cannot tell the colours apart
    assert cat.item_texts[0] == "heart: heart, love"
    hand = [i for i, lab in enumerate(cat.labels) if lab.startswith("waving hand")]
    assert len(hand) == 6 and {cat.item_texts[i] for i in hand} == {"waving hand: hand, wave"}  # parent's keywords
    assert {cat.families[i] for i in hand} == {"waving hand"}


def _seed_with_queries_in_every_split(cat):
    for seed in range(100):  # the structure under test needs val and test queries; the rule itself is seeded
        cfg = EmojiConfig(val_fraction=0.3, test_fraction=0.3, seed=seed, dim=4, n_candidates=6)
        split = cat.split_of_items(cfg)[np.asarray(cat.queries)]
        if all(np.any(split == s) for s in range(3)):
            return cfg
    raise AssertionError("no seed puts queries in every split")


def test_split_keeps_families_together(tmp_path):
    cat = _catalogue(tmp_path)
    cfg = _seed_with_queries_in_every_split(cat)
    split = cat.split_of_items(cfg)
    for fam in set(cat.families):
        assert len({split[i] for i, f in enumerate(cat.families) if f == fam}) == 1
    assert np.array_equal(split, cat.split_of_items(cfg))  # seeded


def test_zero_shot_rows_cover_the_catalogue(tmp_path):
    cat = _catalogue(tmp_path)
    cfg = _seed_with_queries_in_every_split(cat)
    track = build_track(tmp_path / "cache", cfg, text=_bag_of_words, image=_mean_colour, fetch=False)
    assert (track.n_items, track.n_queries) == (26, 21)
    assert set(track.summary) == {"val", "test"}
    split = cat.split_of_items(cfg)[np.asarray(cat.queries)]
    for name, s in track.summary.items():
        assert s["n_queries"] == int(np.sum(split == SPLITS.index(name)))
        for m in ("text", "visual", "sum", "late", "random"):
            assert 0 <= s[m]["ndcg@10"] <= 1
        assert s["late_weight"] in LATE_WEIGHTS and s["late_weight"] == track.summary["val"]["late_weight"]
        assert set(s["paired"]) == {"sum-text", "sum-visual", "late-text", "late-visual"}
        assert sum(v["n_queries"] for v in s["by_kind"].values()) == s["n_queries"]
    assert track.summary["val"]["random"]["mrr"] == pytest.approx(np.mean(1 / np.arange(1, 27)))
    saved = json.loads((tmp_path / "cache" / "emoji_zero_shot.json").read_text())
    assert saved["summary"]["test"]["text"] == track.summary["test"]["text"]


def test_features_are_reused_only_for_the_same_catalogue(tmp_path):
    cat = _catalogue(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(InvalidInputError, match="build the track first"):
        load_features(cache, cat, encode=False)
    feats = load_features(cache, cat, text=_bag_of_words, image=_mean_colour)
    again = load_features(cache, cat, encode=False)
    np.testing.assert_array_equal(again.image, feats.image)
    cat.item_texts[0] = "changed"
    with pytest.raises(InvalidInputError):
        load_features(cache, cat, encode=False)


def _features(cat, seed=0):
    rng = np.random.default_rng(seed)
    n, m = len(cat.labels), len(cat.queries)
    return EmojiFeatures(rng.standard_normal((n, 6)), rng.standard_normal((n, 6)), rng.standard_normal((n, 5)),
                         rng.standard_normal((m, 6)))


def test_probe_sees_only_training_items_and_the_weight_comes_from_val(tmp_path):
    """Val and test scores do not change when a non-training item's label (the probe's input) changes;
    they do when a training item's label changes. The late score is z(text) + w z(visual), w from val."""
    cat = _catalogue(tmp_path)
    cfg = _seed_with_queries_in_every_split(cat)
    feats = _features(cat)
    base = zero_shot(cat, feats, cfg)
    split = cat.split_of_items(cfg)
    held_out = EmojiFeatures(feats.item_text, feats.label.copy(), feats.image, feats.query)
    held_out.label[split != 0] += 5.0
    trained = EmojiFeatures(feats.item_text, feats.label.copy(), feats.image, feats.query)
    trained.label[np.flatnonzero(split == 0)[0]] += 5.0
    for name in ("val", "test"):
        np.testing.assert_allclose(zero_shot(cat, held_out, cfg)[name].scores["visual"], base[name].scores["visual"])
        assert not np.allclose(zero_shot(cat, trained, cfg)[name].scores["visual"], base[name].scores["visual"])
        zs = base[name]
        assert zs.weight == choose_weight(base["val"])
        want = zscore_within(zs.query_id, zs.scores["text"]) + zs.weight * zscore_within(zs.query_id, zs.scores["visual"])
        np.testing.assert_allclose(zs.scores["late"], want)
        assert zs.label.sum() == len(np.unique(zs.query_id))  # one relevant item per query


def test_item_ids_are_a_seeded_permutation(tmp_path):
    cat = _catalogue(tmp_path)
    cfg = _seed_with_queries_in_every_split(cat)
    ids = item_ids(len(cat.labels), cfg)
    assert sorted(ids) == list(range(len(cat.labels))) and not np.array_equal(ids, np.arange(len(cat.labels)))


def test_bad_input(tmp_path):
    with pytest.raises(InvalidInputError, match="missing"):
        read_catalogue(tmp_path / "nothing")
    cat = _catalogue(tmp_path)
    with pytest.raises(ConfigError):
        zero_shot(cat, _features(cat), EmojiConfig(val_fraction=0.6, test_fraction=0.5))
