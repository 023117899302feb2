"""Trained rows of an experiment run next to the zero-shot rows of its real-data track.

    python -m fusionguard.recipes.compare runs/flickr      # writes runs/flickr/tables/zero_shot.csv

Reads the run's per-query test NDCG@10 (mean over seeds, as the experiment report does) and the
zero-shot scores the importer wrote into `<run>/data/main/` (training/zero_shot.py), and tests each
trained row against the zero-shot text row, paired over the same test queries (sign-flip
randomization p-value, 95% paired bootstrap CI of the mean difference).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fusionguard.errors import InvalidInputError
from fusionguard.training.zero_shot import SUMMARY_FILE, load_zero_shot, paired, per_query


def zero_shot_per_query(data_dir: Path, split: str = "test") -> pd.DataFrame:
    """Per-query NDCG@10 of the zero-shot rows, indexed by query id (str), one column per scorer."""
    if not (Path(data_dir) / SUMMARY_FILE).is_file():
        raise InvalidInputError(f"{data_dir} holds no {SUMMARY_FILE}; re-import the track with this version")
    zs = load_zero_shot(data_dir, split)
    pq = per_query(zs.query_id, zs.item_id, zs.label, zs.scores)
    ids = np.unique(zs.query_id).astype(str)
    return pd.DataFrame({f"zero-shot {m}": v["ndcg@10"] for m, v in pq.items()}, index=ids)


def compare(run_dir: str | Path, n_resamples: int = 10_000) -> pd.DataFrame:
    from fusionguard.recipes.experiment_report import _load

    run_dir = Path(run_dir)
    manifest, data = _load(run_dir)
    zero = zero_shot_per_query(run_dir / "data" / "main")
    trained = data.groupby(["label", "query_id"])["ndcg"].mean().unstack(0)  # (queries, rows)
    table = zero.join(trained, how="inner")
    if len(table) != len(zero):
        raise InvalidInputError(f"{len(zero)} zero-shot test queries but {len(table)} shared with the trained rows")
    ref = table["zero-shot text"].to_numpy()
    records = []
    for row in table.columns:
        x = table[row].to_numpy()
        rec = {"row": row, "ndcg@10": float(np.mean(x))}
        if row != "zero-shot text":
            rec.update({f"vs_text_{k}": v for k, v in paired(x, ref, n_resamples).items() if k != "n_resamples"})
        records.append(rec)
    frame = pd.DataFrame(records)
    (run_dir / "tables").mkdir(exist_ok=True)
    (run_dir / "tables" / "zero_shot.csv").write_text(frame.to_csv(index=False, float_format="%.4g"), encoding="utf-8")
    return frame


if __name__ == "__main__":
    print(compare(sys.argv[1]).to_string(index=False))
