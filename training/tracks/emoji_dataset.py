"""The emoji track as a training dataset (train/val/test.parquet) for the trainer and the experiment grid.

Built from the cache the track command made (`python -m fusionguard.training.tracks.emoji --cache DIR`: the
catalogue and features.npz); nothing is downloaded here. Rules, fixed before any trained number was
read (the zero-shot protocol is in training/tracks/emoji.py):
    splits      the track's family split (train / val / test families, disjoint); a query's rows
                hold only items of its own split
    candidates  the relevant item, then its siblings (the other items of its family: the same
                emoji in another colour or skin tone, whose item text is identical) in a seeded
                order, then uniformly random items of the same split, up to n_candidates; the
                rows of a query are shuffled, so the relevant item's position carries no signal
    tokens      a PCA fitted on the training split's items only (text: MiniLM(item text); image:
                the unit EfficientNet-Lite0 feature) keeps 2 * D components (D = dim) per modality;
                the item text is two tokens (components 1..D and D+1..2D), the picture likewise, and
                the query is MiniLM(query text) through the text PCA's first D components; every
                token is scaled to unit norm. (Two tokens per modality: attention entropy needs at
                least two keys, and the second token keeps variance a single D-wide token drops.)
    zero-shot   the track's text, visual, sum and late scores on the same rows (the probe fitted on
                the training items, the late weight chosen on the validation rows) are written next
                to the parquet files (zero_shot.json, zero_shot_scores.npz), so trained rows and
                zero-shot rows are compared on the same candidates (training/tracks/compare.py)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusionguard.dataset import write_dataset
from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.training.tracks.emoji import (SPLITS, Catalogue, EmojiConfig, EmojiFeatures, _unit, choose_weight, item_ids,
                                   late_fusion, load_features, read_catalogue)
from fusionguard.training.zero_shot import ZeroShot, fit_probe, write_zero_shot

META_FILE = "emoji.json"
TOKENS = 2  # tokens per modality (text and image), D PCA components each


def _pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (F, dim) components of x (rows), float64; dim is capped at the rank available."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim].T
    if comps.shape[1] < dim:  # fewer training items than dim: pad with zero columns
        comps = np.pad(comps, ((0, 0), (0, dim - comps.shape[1])))
    return mean, comps


def candidates(cat: Catalogue, split: np.ndarray, cfg: EmojiConfig) -> dict[int, np.ndarray]:
    """Query item -> its candidate item indices (relevant first; shuffled later)."""
    rng = np.random.default_rng(cfg.seed + 2)
    families: dict[str, list[int]] = {}
    for i, f in enumerate(cat.families):
        families.setdefault(f, []).append(i)
    out = {}
    for q in cat.queries:
        pool = np.flatnonzero(split == split[q])
        siblings = np.array([i for i in families[cat.families[q]] if i != q], dtype=np.int64)
        siblings = rng.permutation(siblings)[: cfg.n_candidates - 1]
        rest = np.setdiff1d(pool, np.concatenate([[q], siblings]))
        n_random = min(len(rest), cfg.n_candidates - 1 - len(siblings))
        out[q] = np.concatenate([[q], siblings, rng.choice(rest, n_random, replace=False)]).astype(np.int64)
    return out


@dataclass
class EmojiImport:
    out: Path
    rows: dict[str, int]
    queries: dict[str, int]
    zero_shot: dict

    def summary(self) -> str:
        lines = [f"wrote {', '.join(f'{s}.parquet ({self.queries[s]} queries, {n} rows)' for s, n in self.rows.items())} to {self.out}"]
        for split, rows in self.zero_shot.items():
            lines.append(f"zero-shot {split}: " + ", ".join(f"{m} NDCG@10 {rows[m]['ndcg@10']:.3f}"
                                                            for m in ("random", "text", "visual", "sum", "late") if m in rows))
        return "\n".join(lines)


def build_dataset(cat: Catalogue, feats: EmojiFeatures, out: str | Path, cfg: EmojiConfig = EmojiConfig()) -> EmojiImport:
    """Write train/val/test.parquet, emoji.json and the zero-shot rows on the same rows into `out`."""
    problems = cfg.problems()
    if problems:
        raise ConfigError("emoji dataset options", problems)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = cat.split_of_items(cfg)
    train = split == 0
    d = cfg.dim
    t_mean, t_comp = _pca(feats.item_text[train].astype(np.float64), TOKENS * d)
    img = _unit(feats.image.astype(np.float64))
    i_mean, i_comp = _pca(img[train], TOKENS * d)

    def tokens(x, mean, comp):  # (n, F) -> (n, TOKENS, D) unit tokens
        return _unit(((x - mean) @ comp).reshape(len(x), TOKENS, d)).astype(np.float32)

    item_text, item_img = tokens(feats.item_text, t_mean, t_comp), tokens(img, i_mean, i_comp)
    query_tok = _unit((feats.query - t_mean) @ t_comp[:, :d]).astype(np.float32)
    probe = fit_probe(feats.label[train], img[train], cfg.ridge_alpha)
    ids = item_ids(len(cat.labels), cfg)
    cands = candidates(cat, split, cfg)
    rng = np.random.default_rng(cfg.seed + 3)
    qpos = {q: j for j, q in enumerate(cat.queries)}
    rows, queries, zero = {}, {}, {}
    for s, name in enumerate(SPLITS):
        qid, item, label, q_rows, cand_rows = [], [], [], [], []
        for q in cat.queries:
            if split[q] != s:
                continue
            c = rng.permutation(cands[q])
            qid.append(np.full(len(c), qpos[q], dtype=np.int64))
            item.append(ids[c])
            label.append((c == q).astype(np.int64))
            q_rows.append(np.full(len(c), qpos[q], dtype=np.int64))
            cand_rows.append(c)
        if not qid:
            raise InvalidInputError(f"the {name} split holds no query; change seed or the split fractions")
        qid, item, label = np.concatenate(qid), np.concatenate(item), np.concatenate(label)
        q_rows, cand_rows = np.concatenate(q_rows), np.concatenate(cand_rows)
        write_dataset(out / f"{name}.parquet", qid, item, label,
                      {"query": query_tok[q_rows], "text_tokens": item_text[cand_rows], "visual_tokens": item_img[cand_rows]})
        rows[name], queries[name] = int(len(label)), int(len(np.unique(qid)))
        text = np.einsum("ne,ne->n", feats.query[q_rows], feats.item_text[cand_rows])
        visual = np.einsum("nf,nf->n", _unit(probe.project(feats.query[q_rows].astype(np.float64))), img[cand_rows])
        zero[name] = ZeroShot.from_features(qid, item, label, text, visual)
    weight = choose_weight(zero["val"])
    for zs in zero.values():
        zs.scores["late"] = late_fusion(zs, weight)
        zs.weight = weight
    summary = write_zero_shot(out, zero)
    meta = {"config": asdict(cfg), "rows": rows, "queries": queries, "late_weight": weight,
            "input_dims": {"d": cfg.dim, "lt": TOKENS, "lv": TOKENS}, "zero_shot": summary}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return EmojiImport(out, rows, queries, summary)


def import_emoji(cache: str | Path, out: str | Path, cfg: EmojiConfig = EmojiConfig()) -> EmojiImport:
    """The dataset from a built track cache. Raises InvalidInputError when the cache is not built."""
    cache = Path(cache)
    cat = read_catalogue(cache / "npm")
    return build_dataset(cat, load_features(cache, cat, encode=False), out, cfg)
