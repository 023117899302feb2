"""The synthetic image-search benchmark: relevance depends on text AND on what only the image shows.

Generative story (one query, `n_candidates` candidates; docs/training.md has the long form):

1. The query has a topic u (a random unit vector in R^D) and asks for one visual attribute a
   out of `n_attributes` (think "red", "striped"); each attribute has a fixed random unit
   prototype c_a. The query embedding is `query = u + query_attribute·c_a + noise`: the user's
   words name the attribute, but candidate *texts* never do.
2. Candidate i has a topic w_i with topical closeness t_i = cos(w_i, u) spread over [0, 1), and
   an attribute b_i that equals a with probability `match_rate` (else a random other attribute).
3. Text modality: `text_tokens` are Lt noisy copies of `text_strength·w_i + text_match·t_i·m`
   (caption words all about the topic, plus the search engine's lexical-match score t_i along a
   fixed direction m, as production text features carry), `text_noise` per coordinate. The text
   signal is easy and strong: t_i is linear in the mean text token.
4. Visual modality: `visual_tokens` are Lv patches. `object_patches` of them, at random
   positions, show the attribute as `visual_strength·s·c_{b_i}` where the sign s = ±1 is drawn per
   patch (a texture/polarity nuisance), the rest are random clutter of norm `clutter_strength`
   (background, other objects); every patch gets
   `visual_noise`. The visual signal is weaker and harder: spread over patch positions, invisible
   to mean pooling (the signs cancel), and only readable through a query-dependent, sign-invariant
   interaction such as sharp attention onto the object patch.
5. Relevance: z_i = text_weight·t_i + visual_weight·1[b_i = a] + label_noise·ε, and labels 0..4
   are z binned at fixed quantiles of z over the whole benchmark (`grade_quantiles`).

The oracle ranks by the noise-free z (with visual) and by text_weight·t_i alone (without); the
difference between their NDCG@10 is how much visual can possibly add.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.dataset import write_dataset
from fusionguard.errors import ConfigError
from fusionguard.metrics import QueryGroups, ndcg_at_k

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
META_FILE = "synth.json"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    n_train: int = 320  # queries per split
    n_val: int = 80
    n_test: int = 100
    n_candidates: int = 50  # candidates per query
    dim: int = 32  # embedding width D
    text_tokens: int = 8  # Lt
    visual_tokens: int = 8  # Lv
    n_attributes: int = 6  # visual attributes a query can ask for
    match_rate: float = 0.3  # P(candidate shows the query's attribute)
    text_weight: float = 1.0  # weight of topical closeness t in the latent relevance
    visual_weight: float = 0.35  # weight of the attribute match in the latent relevance
    label_noise: float = 0.05  # std of the relevance noise
    text_strength: float = 1.0  # norm of the topic signal on each text token
    text_match: float = 1.0  # weight of the engine's lexical match feature t on each text token (0 = none)
    text_noise: float = 0.3  # per-coordinate std on text tokens (before /sqrt(D) scaling)
    visual_strength: float = 0.7  # norm of the attribute signal on an object patch (clutter patches have norm clutter_strength)
    clutter_strength: float = 1.0  # norm of the clutter on the other patches (background, other objects)
    visual_noise: float = 0.5  # per-coordinate std on patches (before /sqrt(D) scaling)
    object_patches: int = 2  # patches that show the attribute
    object_sign_flip: bool = True  # draw the sign of each object patch at random (defeats mean pooling)
    query_attribute: float = 0.7  # weight of the attribute prototype in the query embedding
    grade_quantiles: tuple[float, ...] = (0.55, 0.8, 0.92, 0.98)  # z quantiles separating labels 0|1|2|3|4

    def problems(self) -> list[str]:
        p = []
        for name in ("n_train", "n_val", "n_test", "dim", "text_tokens", "visual_tokens", "object_patches"):
            if getattr(self, name) < 1:
                p.append(f"{name} = {getattr(self, name)} must be >= 1")
        if self.n_candidates < 2:
            p.append(f"n_candidates = {self.n_candidates} must be >= 2")
        if self.n_attributes < 2:
            p.append(f"n_attributes = {self.n_attributes} must be >= 2")
        if self.object_patches > self.visual_tokens:
            p.append(f"object_patches = {self.object_patches} cannot exceed visual_tokens = {self.visual_tokens}")
        if not 0 < self.match_rate < 1:
            p.append(f"match_rate = {self.match_rate} must be in (0, 1)")
        for name in ("text_weight", "visual_weight", "label_noise", "text_strength", "text_match", "text_noise", "visual_strength", "clutter_strength", "visual_noise", "query_attribute"):
            if getattr(self, name) < 0:
                p.append(f"{name} = {getattr(self, name)} must be >= 0")
        q = self.grade_quantiles
        if len(q) != 4 or any(not 0 < x < 1 for x in q) or list(q) != sorted(q):
            p.append(f"grade_quantiles = {list(q)} must be 4 increasing values in (0, 1) (labels 0..4)")
        return p


@dataclass
class SynthSplit:
    """One split in memory: ids, labels, inputs, and the oracle's latent relevance parts."""

    query_id: np.ndarray  # (n,) int64
    item_id: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) int64 in 0..4
    feeds: dict[str, np.ndarray]  # query (n, D), text_tokens (n, Lt, D), visual_tokens (n, Lv, D)
    text_part: np.ndarray  # (n,) text_weight * t
    visual_part: np.ndarray  # (n,) visual_weight * match


@dataclass
class SynthResult:
    out: Path
    config: SynthConfig
    rows: dict[str, int]
    oracle_ndcg10: dict[str, float]  # {"with_visual", "text_only"} on the test split

    def summary(self) -> str:
        o = self.oracle_ndcg10
        return (
            f"wrote {', '.join(f'{s}.parquet ({n} rows)' for s, n in self.rows.items())} to {self.out}\n"
            f"oracle NDCG@10 on test: with visual {o['with_visual']:.4f}, text only {o['text_only']:.4f} "
            f"(visual adds {o['with_visual'] - o['text_only']:+.4f})"
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _generate(cfg: SynthConfig, n_queries: int, rng: np.random.Generator, prototypes: np.ndarray, match_dir: np.ndarray, first_qid: int):
    d, c, lt, lv = cfg.dim, cfg.n_candidates, cfg.text_tokens, cfg.visual_tokens
    n = n_queries * c
    topic = _unit(rng.standard_normal((n_queries, d)))  # (Q, D)
    attr = rng.integers(0, cfg.n_attributes, n_queries)  # (Q,)
    query = topic + cfg.query_attribute * prototypes[attr] + 0.1 * rng.standard_normal((n_queries, d)) / np.sqrt(d)
    # candidate topics: closeness t in [0, 1) skewed low (most candidates are off-topic)
    t = rng.beta(1.2, 2.0, (n_queries, c))  # (Q, C)
    other = rng.standard_normal((n_queries, c, d))
    other -= (other @ topic[:, :, None]) * topic[:, None, :]  # orthogonal to the query topic
    w = t[..., None] * topic[:, None, :] + np.sqrt(1 - t**2)[..., None] * _unit(other)  # unit, cos(w, u) = t
    match = rng.random((n_queries, c)) < cfg.match_rate
    shift = rng.integers(1, cfg.n_attributes, (n_queries, c))
    cand_attr = np.where(match, attr[:, None], (attr[:, None] + shift) % cfg.n_attributes)
    # text tokens: noisy copies of the candidate topic
    # the search engine's lexical-match score (think BM25), written along a fixed direction m
    text = cfg.text_strength * w[:, :, None, :] + cfg.text_match * t[..., None, None] * match_dir + cfg.text_noise * rng.standard_normal((n_queries, c, lt, d)) / np.sqrt(d)
    # visual patches: clutter everywhere, the attribute (random sign) on `object_patches` positions
    vis = cfg.clutter_strength * _unit(rng.standard_normal((n_queries, c, lv, d)))
    pos = np.argsort(rng.random((n_queries, c, lv)), axis=-1)[..., : cfg.object_patches]  # (Q, C, P)
    sign = rng.choice(np.array([-1.0, 1.0]), (n_queries, c, cfg.object_patches))
    if not cfg.object_sign_flip:
        sign = np.abs(sign)
    obj = cfg.visual_strength * sign[..., None] * prototypes[cand_attr][:, :, None, :]  # (Q, C, P, D)
    np.put_along_axis(vis, pos[..., None], obj, axis=2)
    vis = vis + cfg.visual_noise * rng.standard_normal(vis.shape) / np.sqrt(d)
    text_part = cfg.text_weight * t
    visual_part = cfg.visual_weight * match.astype(np.float64)
    z = text_part + visual_part + cfg.label_noise * rng.standard_normal((n_queries, c))
    qid = np.repeat(np.arange(first_qid, first_qid + n_queries, dtype=np.int64), c)
    iid = np.tile(np.arange(c, dtype=np.int64), n_queries)
    feeds = {
        "query": np.repeat(query, c, axis=0).astype(np.float32),
        "text_tokens": text.reshape(n, lt, d).astype(np.float32),
        "visual_tokens": vis.reshape(n, lv, d).astype(np.float32),
    }
    return qid, iid, z.reshape(n), feeds, text_part.reshape(n), visual_part.reshape(n)


def generate(cfg: SynthConfig) -> dict[str, SynthSplit]:
    """All three splits in memory, deterministic in `cfg` (including its seed)."""
    problems = cfg.problems()
    if problems:
        raise ConfigError("synth options", problems)
    rng = np.random.default_rng(cfg.seed)
    prototypes = _unit(rng.standard_normal((cfg.n_attributes, cfg.dim)))
    match_dir = _unit(rng.standard_normal(cfg.dim))
    raw = {}
    first = 0
    for split, n_q in zip(SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test)):
        raw[split] = _generate(cfg, n_q, rng, prototypes, match_dir, first)
        first += n_q
    z_all = np.concatenate([r[2] for r in raw.values()])
    edges = np.quantile(z_all, cfg.grade_quantiles)
    out = {}
    for split, (qid, iid, z, feeds, tp, vp) in raw.items():
        out[split] = SynthSplit(qid, iid, np.digitize(z, edges).astype(np.int64), feeds, tp, vp)
    return out


def oracle_ndcg(split: SynthSplit, k: int = 10) -> dict[str, float]:
    """NDCG@k of the noise-free relevance with and without its visual part (mean over queries)."""
    groups = QueryGroups.from_arrays(split.query_id, split.item_id, split.label)
    both = ndcg_at_k(groups, np.stack([split.text_part + split.visual_part, split.text_part]), k=k)
    return {"with_visual": float(np.nanmean(both[0])), "text_only": float(np.nanmean(both[1]))}


def write_benchmark(cfg: SynthConfig, out: str | Path) -> SynthResult:
    """Generate the benchmark and write train/val/test Parquet files plus synth.json into `out`."""
    out = Path(out)
    splits = generate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, s in splits.items():
        write_dataset(out / f"{name}.parquet", s.query_id, s.item_id, s.label, s.feeds)
        rows[name] = int(s.query_id.shape[0])
    oracle = oracle_ndcg(splits["test"])
    meta: dict[str, Any] = {
        "config": asdict(cfg),
        "input_dims": {"d": cfg.dim, "lt": cfg.text_tokens, "lv": cfg.visual_tokens},
        "rows": rows,
        "oracle_ndcg10_test": oracle,
        "oracle_ndcg10_val": oracle_ndcg(splits["val"]),
        "label_counts_test": np.bincount(splits["test"].label, minlength=5).tolist(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    logger.info("synthetic benchmark written to %s", out)
    return SynthResult(out=out, config=cfg, rows=rows, oracle_ndcg10=oracle)
