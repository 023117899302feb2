"""Import precomputed Flickr8k features into the dataset schema (the real-data track).

The folder (README there: internal evaluation only; never copy it into this repository) holds,
per split (`val/`, `test/`), 1000 images in sorted filename order with:
    image_ids.json  captions.json  clip_image.npy [1000, 512]  clip_text_caption0.npy [1000, 512]
    minilm_captions.npy [1000, 5, 384] (float16)

Ranking task (one query = one caption, one relevant image):
    query          = MiniLM embedding of caption #k of image i (k = 1..queries_per_image)
    candidates     = images of the same split subset: image i (label 1), `hard_negatives` images
                     whose caption #0 is closest to the query in MiniLM space, the rest random (label 0)
    text_tokens    = (2, D) the candidate's own caption #0, the item text: its MiniLM embedding and
                     its CLIP text feature (L2-normalised); two keys, so a text-only model's
                     attention entropy is defined
    visual_tokens  = (1, D) the candidate's CLIP ViT-B/32 image feature (L2-normalised)
Both feature spaces go to a common width D through fixed Gaussian random projections seeded by
`seed` (one for MiniLM, one shared by CLIP image and CLIP text, so their alignment is kept) (N(0, 1/D) entries, so inner products are kept in expectation); MiniLM is re-normalised
after the float16 -> float32 cast.

Splits: Flickr8k's validation images train the models (`1 - es_fraction` of them) and stop them
early (`es_fraction`, the val.parquet); Flickr8k's test images are the held-out test.parquet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusionguard.dataset import write_dataset
from fusionguard.errors import ConfigError, InvalidInputError

logger = logging.getLogger(__name__)

FILES = ("image_ids.json", "captions.json", "clip_image.npy", "clip_text_caption0.npy", "minilm_captions.npy")
META_FILE = "flickr.json"


@dataclass(frozen=True)
class FlickrConfig:
    dim: int = 128  # common width D of every token after the random projections
    n_candidates: int = 50  # candidates per query, the relevant image included
    hard_negatives: int = 20  # negatives chosen by MiniLM caption similarity to the query (rest random)
    queries_per_image: int = 1  # captions #1..#k of each image become queries (k <= 4)
    es_fraction: float = 0.2  # share of the validation images held out for early stopping
    max_images: int | None = None  # use only the first N images of each Flickr8k split (small scale)
    seed: int = 0  # projections, the early-stopping split and the random negatives

    def problems(self) -> list[str]:
        p = []
        if self.dim < 1:
            p.append(f"dim = {self.dim} must be >= 1")
        if self.n_candidates < 2:
            p.append(f"n_candidates = {self.n_candidates} must be >= 2")
        if not 0 <= self.hard_negatives < self.n_candidates:
            p.append(f"hard_negatives = {self.hard_negatives} must be in [0, n_candidates)")
        if not 1 <= self.queries_per_image <= 4:
            p.append(f"queries_per_image = {self.queries_per_image} must be in 1..4 (caption #0 is the item text)")
        if not 0 < self.es_fraction < 1:
            p.append(f"es_fraction = {self.es_fraction} must be in (0, 1)")
        if self.max_images is not None and self.max_images < 2:
            p.append(f"max_images = {self.max_images} must be >= 2 or absent")
        return p


@dataclass
class FlickrSplit:
    """One Flickr8k split in memory."""

    image_ids: list[str]
    clip_image: np.ndarray  # (n, 512) float32, raw
    clip_text: np.ndarray  # (n, 512) float32, raw CLIP text feature of caption #0
    minilm: np.ndarray  # (n, 5, 384) float32, unit norm


def read_split(root: Path, split: str, max_images: int | None = None) -> FlickrSplit:
    """Read and check one split folder; InvalidInputError lists every problem."""
    folder = Path(root) / split
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise InvalidInputError(f"{folder} lacks {missing}; point --data-root at the Flickr8k feature folder (see its README.md)")
    ids = json.loads((folder / "image_ids.json").read_text(encoding="utf-8"))
    img = np.load(folder / "clip_image.npy").astype(np.float32)
    txt = np.load(folder / "clip_text_caption0.npy").astype(np.float32)
    mini = np.load(folder / "minilm_captions.npy").astype(np.float32)
    problems = []
    n = len(ids)
    if img.ndim != 2 or img.shape[0] != n:
        problems.append(f"clip_image.npy has shape {img.shape}; expected ({n}, F)")
    if txt.shape != img.shape:
        problems.append(f"clip_text_caption0.npy has shape {txt.shape}; expected {img.shape} like clip_image.npy")
    if mini.ndim != 3 or mini.shape[:2] != (n, 5):
        problems.append(f"minilm_captions.npy has shape {mini.shape}; expected ({n}, 5, E)")
    if ids != sorted(ids):
        problems.append("image_ids.json is not in sorted order; every array's rows must follow sorted image ids")
    if not (np.isfinite(img).all() and np.isfinite(txt).all() and np.isfinite(mini).all()):
        problems.append("features contain NaN or inf")
    if problems:
        raise InvalidInputError(f"{folder}: " + "; ".join(problems))
    m = n if max_images is None else min(n, max_images)
    mini = mini[:m] / np.linalg.norm(mini[:m], axis=-1, keepdims=True)
    return FlickrSplit(ids[:m], img[:m], txt[:m], mini)


def _projection(rng: np.random.Generator, d_in: int, d_out: int) -> np.ndarray:
    return (rng.standard_normal((d_in, d_out)) / np.sqrt(d_out)).astype(np.float32)


def build_queries(split: FlickrSplit, images: np.ndarray, cfg: FlickrConfig, rng: np.random.Generator,
                  proj_text: np.ndarray, proj_image: np.ndarray, first_qid: int) -> dict[str, np.ndarray]:
    """Rows for the queries of `images` (indices into `split`), candidates drawn from `images`."""
    n_cand = min(cfg.n_candidates, len(images))
    caption0 = split.minilm[images, 0]  # (m, E) item texts of the subset
    image_n = split.clip_image[images] / np.linalg.norm(split.clip_image[images], axis=1, keepdims=True)
    clip_text = split.clip_text[images] / np.linalg.norm(split.clip_text[images], axis=1, keepdims=True)
    text_tok = np.stack([caption0 @ proj_text, clip_text @ proj_image], axis=1)  # (m, 2, D)
    vis_tok = image_n @ proj_image  # (m, D)
    qid, iid, label, query, cand = [], [], [], [], []
    q = first_qid
    for local, _ in enumerate(images):
        for k in range(1, cfg.queries_per_image + 1):
            emb = split.minilm[images[local], k]
            sims = caption0 @ emb
            sims[local] = -np.inf
            n_hard = min(cfg.hard_negatives, n_cand - 1)
            hard = np.argsort(-sims, kind="stable")[:n_hard]
            rest = np.setdiff1d(np.arange(len(images)), np.concatenate([[local], hard]))
            rand = rng.choice(rest, n_cand - 1 - n_hard, replace=False)
            chosen = np.concatenate([[local], hard, rand]).astype(np.int64)
            qid.append(np.full(n_cand, q, dtype=np.int64))
            iid.append(images[chosen].astype(np.int64))  # item id = image row in its Flickr8k split
            label.append((chosen == local).astype(np.int64))
            query.append(np.repeat((emb @ proj_text)[None], n_cand, axis=0))
            cand.append(chosen)
            q += 1
    chosen_all = np.concatenate(cand)
    return {"query_id": np.concatenate(qid), "item_id": np.concatenate(iid), "label": np.concatenate(label),
            "query": np.concatenate(query).astype(np.float32),
            "text_tokens": text_tok[chosen_all].astype(np.float32),
            "visual_tokens": vis_tok[chosen_all][:, None, :].astype(np.float32)}


@dataclass
class FlickrImport:
    out: Path
    rows: dict[str, int]
    queries: dict[str, int]

    def summary(self) -> str:
        return f"wrote {', '.join(f'{s}.parquet ({self.queries[s]} queries, {n} rows)' for s, n in self.rows.items())} to {self.out}"


def import_flickr(root: str | Path, out: str | Path, cfg: FlickrConfig = FlickrConfig()) -> FlickrImport:
    """Write train/val/test.parquet (dataset schema) and flickr.json into `out`.

    Raises:
        ConfigError: bad options (all listed).
        InvalidInputError: the feature folder is missing files or has inconsistent shapes.
    """
    problems = cfg.problems()
    if problems:
        raise ConfigError("flickr import options", problems)
    root, out = Path(root), Path(out)
    val, test = read_split(root, "val", cfg.max_images), read_split(root, "test", cfg.max_images)
    rng = np.random.default_rng(cfg.seed)
    proj_text = _projection(rng, val.minilm.shape[-1], cfg.dim)
    proj_image = _projection(rng, val.clip_image.shape[-1], cfg.dim)
    order = rng.permutation(len(val.image_ids))
    n_es = max(2, int(round(cfg.es_fraction * len(order))))
    parts = {"train": (val, np.sort(order[n_es:])), "val": (val, np.sort(order[:n_es])), "test": (test, np.arange(len(test.image_ids)))}
    out.mkdir(parents=True, exist_ok=True)
    rows, queries, first = {}, {}, 0
    for name, (split, images) in parts.items():
        data = build_queries(split, images, cfg, rng, proj_text, proj_image, first)
        write_dataset(out / f"{name}.parquet", data["query_id"], data["item_id"], data["label"],
                      {k: data[k] for k in ("query", "text_tokens", "visual_tokens")})
        rows[name] = int(len(data["label"]))
        queries[name] = int(len(np.unique(data["query_id"])))
        first += queries[name]
    meta = {"config": asdict(cfg), "source": str(root), "rows": rows, "queries": queries,
            "input_dims": {"d": cfg.dim, "lt": 2, "lv": 1}}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return FlickrImport(out, rows, queries)
