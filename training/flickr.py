"""Import precomputed Flickr8k features into the dataset schema (the real-data track).

The folder (README there: internal evaluation only; never copy it into this repository) holds,
per split (`val/`, `test/`), 1000 images in sorted filename order with:
    image_ids.json  captions.json  clip_image.npy [1000, 512]  clip_text_caption0.npy [1000, 512]
    minilm_captions.npy [1000, 5, 384] (float16)

Ranking task (one query = one caption, one relevant image), fixed before any result was read:
    query          = MiniLM embedding of caption #k of image i, for k = 0..queries_per_image-1
                     (5: every caption of every image is a query)
    item text      = (4, D) the candidate's other four captions (#j, j != k, in order), as MiniLM
                     embeddings. The query's caption index k is held out of every candidate's text
                     (relevant or not), so the relevant item never contains the query sentence and
                     the rule gives no hint which candidate is relevant. CLIP text features exist
                     only for caption #0, so they are not used (they would leak for k = 0).
    visual_tokens  = (1, D) the candidate's CLIP ViT-B/32 image feature (L2-normalised)
    candidates     = the relevant image plus n_candidates - 1 negatives from the query's pool,
                     mined neutrally: a third are the images whose item text is closest to the
                     query (zero-shot text score), a third the images closest to the relevant image
                     in CLIP image space, the rest uniformly random (the remainder of the division
                     goes to random); text-nearest are taken first, image-nearest from what is
                     left, random from what is left after that. Rows of a query are then shuffled,
                     so the relevant item's position carries no signal.
    pools          = each split's images are cut (seeded permutation) into disjoint pools of
                     exactly `pool_images` images; a query's candidates come from its image's pool.
                     Training, early stopping and test use the same pool size, so their negatives
                     are equally hard; images left over after the last whole pool are dropped
                     (counted in flickr.json).
Both feature spaces go to a common width D through fixed Gaussian random projections seeded by
`seed` (N(0, 1/D) entries, so inner products are kept in expectation); MiniLM is re-normalised
after the float16 -> float32 cast.

Splits: Flickr8k's validation images train the models (`1 - es_fraction` of them) and stop them
early (`es_fraction`, the val.parquet); Flickr8k's test images are the held-out test.parquet.
Zero-shot rows (training/zero_shot.py) are scored on the raw features at import time and written
next to the parquet files (zero_shot.json, zero_shot_scores.npz).
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
N_CAPTIONS = 5


@dataclass(frozen=True)
class FlickrConfig:
    dim: int = 128  # common width D of every token after the random projections
    n_candidates: int = 31  # candidates per query, the relevant image included (30 negatives: 10/10/10)
    pool_images: int = 200  # images per candidate pool, the same in training, early stopping and test
    queries_per_image: int = 5  # captions #0..#k-1 of each image become queries (5 = every pair)
    es_fraction: float = 0.2  # share of the validation images held out for early stopping
    max_images: int | None = None  # use only the first N images of each Flickr8k split (small scale)
    ridge_alpha: float = 1.0  # L2 penalty of the zero-shot MiniLM -> CLIP probe (fixed, not tuned)
    seed: int = 0  # projections, the splits, the pools, the random negatives and the shuffles

    def problems(self) -> list[str]:
        p = []
        if self.dim < 1:
            p.append(f"dim = {self.dim} must be >= 1")
        if self.n_candidates < 2:
            p.append(f"n_candidates = {self.n_candidates} must be >= 2")
        if self.pool_images < self.n_candidates:
            p.append(f"pool_images = {self.pool_images} must be >= n_candidates = {self.n_candidates}")
        if not 1 <= self.queries_per_image <= N_CAPTIONS:
            p.append(f"queries_per_image = {self.queries_per_image} must be in 1..{N_CAPTIONS}")
        if not 0 < self.es_fraction < 1:
            p.append(f"es_fraction = {self.es_fraction} must be in (0, 1)")
        if self.max_images is not None and self.max_images < 2:
            p.append(f"max_images = {self.max_images} must be >= 2 or absent")
        if not self.ridge_alpha > 0:
            p.append(f"ridge_alpha = {self.ridge_alpha} must be > 0")
        return p


@dataclass
class FlickrSplit:
    """One Flickr8k split in memory."""

    image_ids: list[str]
    clip_image: np.ndarray  # (n, 512) float32, raw
    clip_text: np.ndarray  # (n, 512) float32, raw CLIP text feature of caption #0 (read, checked, unused)
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
    if mini.ndim != 3 or mini.shape[:2] != (n, N_CAPTIONS):
        problems.append(f"minilm_captions.npy has shape {mini.shape}; expected ({n}, {N_CAPTIONS}, E)")
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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def other_captions(k: int) -> np.ndarray:
    """Caption indices that form the item text when caption #k is the query."""
    return np.array([j for j in range(N_CAPTIONS) if j != k])


def text_scores(query: np.ndarray, item_text: np.ndarray) -> np.ndarray:
    """Zero-shot text score: cosine of the query with the unit mean of each item's caption embeddings.

    query (E,) unit; item_text (m, T, E) unit rows -> (m,).
    """
    return _unit(item_text.mean(axis=1)) @ query


def make_pools(n: int, pool_images: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint pools of exactly `pool_images` indices into range(n), from a seeded permutation."""
    order = rng.permutation(n)
    return [np.sort(order[i * pool_images:(i + 1) * pool_images]) for i in range(n // pool_images)]


def mine_negatives(text_sim: np.ndarray, image_sim: np.ndarray, relevant: int, n_neg: int,
                   rng: np.random.Generator) -> np.ndarray:
    """n_neg negatives (indices into the pool): n_neg // 3 text-nearest, n_neg // 3 image-nearest, the rest random."""
    taken = np.zeros(len(text_sim), dtype=bool)
    taken[relevant] = True
    n_third = n_neg // 3
    picks = []
    for sims in (text_sim, image_sim):
        order = np.argsort(-sims, kind="stable")
        best = order[~taken[order]][:n_third]
        taken[best] = True
        picks.append(best)
    rest = np.flatnonzero(~taken)
    picks.append(rng.choice(rest, n_neg - 2 * n_third, replace=False))
    return np.concatenate(picks)


def build_queries(split: FlickrSplit, pools: list[np.ndarray], cfg: FlickrConfig, rng: np.random.Generator,
                  proj_text: np.ndarray, proj_image: np.ndarray, first_qid: int) -> dict[str, np.ndarray]:
    """Rows for every query of every image in `pools` (index arrays into `split`).

    Also returns the raw features the zero-shot rows need: "raw_query" (rows, E), "raw_text"
    (rows, 4, E) and "raw_image" (rows, F, unit).
    """
    image_n = _unit(split.clip_image)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("query_id", "item_id", "label", "query", "text_tokens",
                                                        "visual_tokens", "raw_query", "raw_text", "raw_image")}
    q = first_qid
    for pool in pools:
        pool_img = image_n[pool]  # (P, F)
        img_sim = pool_img @ pool_img.T  # (P, P)
        for local in range(len(pool)):
            for k in range(cfg.queries_per_image):
                emb = split.minilm[pool[local], k]  # (E,)
                item_text = split.minilm[pool][:, other_captions(k)]  # (P, 4, E)
                t_sim = text_scores(emb, item_text)
                neg = mine_negatives(t_sim, img_sim[local], local, cfg.n_candidates - 1, rng)
                chosen = rng.permutation(np.concatenate([[local], neg]))  # the relevant row's position is random
                n = len(chosen)
                out["query_id"].append(np.full(n, q, dtype=np.int64))
                out["item_id"].append(pool[chosen].astype(np.int64))  # item id = image row in its Flickr8k split
                out["label"].append((chosen == local).astype(np.int64))
                out["query"].append(np.repeat((emb @ proj_text)[None], n, axis=0))
                out["text_tokens"].append(item_text[chosen] @ proj_text)  # (n, 4, D)
                out["visual_tokens"].append((pool_img[chosen] @ proj_image)[:, None, :])  # (n, 1, D)
                out["raw_query"].append(np.repeat(emb[None], n, axis=0))
                out["raw_text"].append(item_text[chosen])
                out["raw_image"].append(pool_img[chosen])
                q += 1
    return {k: np.concatenate(v).astype(np.int64 if k in ("query_id", "item_id", "label") else np.float32)
            for k, v in out.items()}


@dataclass
class FlickrImport:
    out: Path
    rows: dict[str, int]
    queries: dict[str, int]
    zero_shot: dict[str, dict[str, dict[str, float]]]

    def summary(self) -> str:
        lines = [f"wrote {', '.join(f'{s}.parquet ({self.queries[s]} queries, {n} rows)' for s, n in self.rows.items())} to {self.out}"]
        for split, rows in self.zero_shot.items():
            lines.append(f"zero-shot {split}: " + ", ".join(f"{m} NDCG@10 {r['ndcg@10']:.3f}" for m, r in rows.items() if m in ("text", "visual", "sum", "random")))
        return "\n".join(lines)


def import_flickr(root: str | Path, out: str | Path, cfg: FlickrConfig = FlickrConfig()) -> FlickrImport:
    """Write train/val/test.parquet (dataset schema), flickr.json and the zero-shot rows into `out`.

    Raises:
        ConfigError: bad options (all listed).
        InvalidInputError: the feature folder is missing files, has inconsistent shapes, or is
            too small for one pool per split.
    """
    from fusionguard.training.zero_shot import ZeroShot, fit_probe, write_zero_shot

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
    subsets = {"train": (val, np.sort(order[n_es:])), "val": (val, np.sort(order[:n_es])),
               "test": (test, np.arange(len(test.image_ids)))}
    pools, dropped = {}, {}
    for name, (split, images) in subsets.items():
        local = make_pools(len(images), cfg.pool_images, rng)
        if not local:
            raise InvalidInputError(f"the {name} split has {len(images)} images, fewer than pool_images = {cfg.pool_images}; "
                                    "lower pool_images or raise max_images")
        pools[name] = [images[p] for p in local]
        dropped[name] = int(len(images) - sum(len(p) for p in local))
    out.mkdir(parents=True, exist_ok=True)
    rows, queries, first, built = {}, {}, 0, {}
    for name, (split, _) in subsets.items():
        data = build_queries(split, pools[name], cfg, rng, proj_text, proj_image, first)
        write_dataset(out / f"{name}.parquet", data["query_id"], data["item_id"], data["label"],
                      {k: data[k] for k in ("query", "text_tokens", "visual_tokens")})
        rows[name] = int(len(data["label"]))
        queries[name] = int(len(np.unique(data["query_id"])))
        first += queries[name]
        built[name] = data
    # The visual-only probe learns MiniLM(query) -> CLIP(image) from the training split's images only.
    train_images = np.concatenate(pools["train"])
    x = val.minilm[train_images, :cfg.queries_per_image].reshape(-1, val.minilm.shape[-1])
    y = np.repeat(_unit(val.clip_image[train_images]), cfg.queries_per_image, axis=0)
    probe = fit_probe(x, y, cfg.ridge_alpha)
    zero = {name: ZeroShot.from_features(d["query_id"], d["item_id"], d["label"], text_scores_rows(d),
                                         probe.score(d["raw_query"], d["raw_image"]))
            for name, d in built.items()}
    summary = write_zero_shot(out, zero)
    meta = {"config": asdict(cfg), "source": str(root), "rows": rows, "queries": queries, "dropped_images": dropped,
            "pools": {k: len(v) for k, v in pools.items()}, "input_dims": {"d": cfg.dim, "lt": N_CAPTIONS - 1, "lv": 1},
            "zero_shot": summary}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return FlickrImport(out, rows, queries, summary)


def text_scores_rows(data: dict[str, np.ndarray]) -> np.ndarray:
    """Zero-shot text score per row of `build_queries` output: cos(query, unit mean of the item text)."""
    return np.einsum("ne,ne->n", _unit(data["raw_text"].mean(axis=1)), data["raw_query"])
