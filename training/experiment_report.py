"""Tables and figures of an experiment directory, rebuilt from its stored files alone.

Sources (nothing else is read; no model is trained or scored):
    manifest.json                          grid entries -> run directory and model stem
    eval/<dataset>-s<seed>/per_query.csv   gate.evaluation's per-query results (NDCG, drops, entropy)
    eval/v1-s<seed>.csv                    per-query NDCG of the text-only V1
    runs/<run>/latency.json, attention.npy, train/train_log.jsonl, <key>.onnx (its contract)

Every row aggregates one grid entry over its seeds: per query, the mean over seeds; then a
bootstrap CI over queries, a paired sign-flip test against the reference (per-query Δ), Holm
across the rows of one table, and the paired effect size (`fusionguard.stats`). The "beats
baseline" columns are computed from those p-values, never typed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionguard import stats
from fusionguard.errors import InvalidInputError

logger = logging.getLogger(__name__)

ALPHA = 0.05
MODALITIES = {"v1": "text only", "visual-only": "visual only"}


@dataclass
class ReportResult:
    out: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    main: pd.DataFrame | None = None

    def summary(self) -> str:
        lines = [f"report in {self.out}: {len(self.tables)} table files, {len(self.figures)} figure files"]
        if self.main is not None:
            cols = ["row", "modalities", "ndcg@10", "delta_ndcg@10", "p_holm", "beats_baseline", "visual_drop"]
            lines.append(self.main[[c for c in cols if c in self.main]].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        return "\n".join(lines)


def _load(out: Path) -> tuple[dict, pd.DataFrame]:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise InvalidInputError(f"{out} holds no manifest.json; run `fusionguard experiment run --out {out}` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    frames = []
    for entry in manifest["entries"]:
        if entry["variant"] == "v1":
            path = out / "eval" / f"v1-s{entry['seed']}.csv"
        else:
            path = out / "eval" / f"{entry['dataset']}-s{entry['seed']}" / "per_query.csv"
        if not path.is_file():
            raise InvalidInputError(f"per-query results {path} are missing; rerun `fusionguard experiment run` to finish the grid")
        frame = pd.read_csv(path, dtype={"query_id": str, "model": str})  # a hex model id can be all digits
        frame = frame[frame["model"] == entry["model"]].copy()
        if frame.empty:
            raise InvalidInputError(f"{path} has no rows for model {entry['model']} ({entry['label']} seed {entry['seed']})")
        frame["label"], frame["seed"], frame["group"] = entry["label"], entry["seed"], entry["group"]
        frame["value"] = entry["value"]
        frames.append(frame)
    return manifest, pd.concat(frames, ignore_index=True)


def _per_query(data: pd.DataFrame, label: str, column: str) -> pd.Series | None:
    rows = data[data["label"] == label]
    if column not in rows or rows[column].isna().all():
        return None
    return rows.groupby("query_id")[column].mean()  # mean over seeds, per query


def _table(manifest: dict, data: pd.DataFrame, labels: list[str], reference: str, out: Path) -> pd.DataFrame:
    n_res = int(manifest["grid"]["eval"]["n_resamples"])
    ref = {c: _per_query(data, reference, c) for c in ("ndcg", "visual_drop")}
    records, raw_p = [], {"ndcg": [], "visual_drop": []}
    for label in labels:
        entries = [e for e in manifest["entries"] if e["label"] == label]
        variant = entries[0]["variant"]
        rec: dict[str, object] = {"row": label, "modalities": MODALITIES.get(variant, "fused"), "seeds": len(entries)}
        seed_means = data[data["label"] == label].groupby("seed")["ndcg"].mean()
        rec["ndcg@10_seed_sd"] = float(seed_means.std(ddof=1)) if len(seed_means) > 1 else np.nan
        for col, name in (("ndcg", "ndcg@10"), ("visual_drop", "visual_drop"), ("attention_entropy", "attention_entropy")):
            values = _per_query(data, label, col)
            iv = stats.bootstrap_ci(values.to_numpy(), "mean", n_res, 0.95, 0) if values is not None else None
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = (iv.estimate, iv.low, iv.high) if iv else (np.nan,) * 3
            if col in ref and values is not None and ref[col] is not None and label != reference:
                a, b = values.align(ref[col], join="inner")
                diff = (a - b).to_numpy()
                ci = stats.paired_bootstrap_ci(a.to_numpy(), b.to_numpy(), n_res, 0.95, 0)
                rec[f"delta_{name}"], rec[f"delta_{name}_low"], rec[f"delta_{name}_high"] = ci.estimate, ci.low, ci.high
                rec[f"p_{col}"] = stats.randomization_test(diff[np.isfinite(diff)], n_res, 0)
                rec[f"effect_{col}"] = stats.paired_effect_size(diff[np.isfinite(diff)])
                raw_p[col].append(len(records))
        lat = [json.loads((out / e["run_dir"] / "latency.json").read_text(encoding="utf-8"))["median_ms"] for e in entries]
        rec["latency_ms"] = float(np.median(lat))
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    for col, beats, word in (("ndcg", "beats_baseline", "NDCG"), ("visual_drop", "uses_visual_more", "visual drop")):
        frame[f"p_holm_{col}"] = np.nan
        frame[beats] = "reference"
        idx = raw_p[col]
        if idx:
            adjusted = stats.holm(frame.loc[idx, f"p_{col}"].to_numpy(dtype=float))
            frame.loc[idx, f"p_holm_{col}"] = adjusted
            delta = frame.loc[idx, f"delta_{'ndcg@10' if col == 'ndcg' else col}"].to_numpy(dtype=float)
            frame.loc[idx, beats] = np.where(adjusted >= ALPHA, "no (n.s.)", np.where(delta > 0, "yes", f"no (lower {word})"))
        missing = [i for i in range(len(frame)) if i not in idx and frame.loc[i, "row"] != reference]
        frame.loc[missing, beats] = "n/a"
    return frame.rename(columns={"p_holm_ndcg": "p_holm", "p_ndcg": "p", "effect_ndcg": "effect_size"})


def _fmt_ci(row: pd.Series, name: str, digits: int = 3, tex: bool = False) -> str:
    est = row.get(name)
    if est is None or not np.isfinite(est):
        return "--" if tex else "–"
    lo, hi = row[f"{name}_low"], row[f"{name}_high"]
    if tex:
        return f"{est:.{digits}f} {{\\scriptsize [{lo:.{digits}f}, {hi:.{digits}f}]}}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt(x, spec: str = ".3g", tex: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "--" if tex else "–"
    return format(x, spec)


COLUMNS = ["row", "modalities", "NDCG@10 [95% CI]", "ΔNDCG@10 vs ref", "p (Holm)", "effect size",
           "beats baseline (Holm p<0.05)", "visual drop [95% CI]", "visual drop > ref (Holm p<0.05)",
           "attn. entropy", "ORT latency (ms)"]


def _cells(row: pd.Series, tex: bool) -> list[str]:
    esc = (lambda s: s.replace("_", r"\_").replace("λ", r"$\lambda$")) if tex else (lambda s: s)
    return [esc(str(row["row"])), str(row["modalities"]), _fmt_ci(row, "ndcg@10", 4, tex), _fmt_ci(row, "delta_ndcg@10", 4, tex),
            _fmt(row.get("p_holm"), tex=tex), _fmt(row.get("effect_size"), ".2f", tex), str(row["beats_baseline"]),
            _fmt_ci(row, "visual_drop", 3, tex), str(row["uses_visual_more"]), _fmt_ci(row, "attention_entropy", 3, tex),
            _fmt(row["latency_ms"], ".3f", tex)]


def write_table(frame: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """CSV (every number), Markdown and LaTeX (booktabs) of one table."""
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    frame.to_csv(paths[0], index=False)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_cells(r, False)) + " |" for _, r in frame.iterrows()]
    paths[1].write_text("\n".join([f"**{caption}**", "", *md, ""]), encoding="utf-8")
    head = [c.replace("%", r"\%").replace("Δ", r"$\Delta$").replace("<", "$<$").replace(">", "$>$") for c in COLUMNS]
    tex = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{caption.replace('%', chr(92) + '%').replace('_', chr(92) + '_')}}}",
           r"\begin{tabular}{ll" + "r" * (len(COLUMNS) - 2) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    tex += [" & ".join(_cells(r, True)) + r" \\" for _, r in frame.iterrows()]
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    paths[2].write_text("\n".join(tex), encoding="utf-8")
    return paths


def build_report(out: str | Path) -> ReportResult:
    """Rebuild every table and figure of the experiment in `out` from its stored result files."""
    from training.experiment_figures import draw_figures

    out = Path(out)
    manifest, data = _load(out)
    grid = manifest["grid"]
    reference = grid["reference"]
    report_dir = out / "report"
    (report_dir / "tables").mkdir(parents=True, exist_ok=True)
    result = ReportResult(report_dir)
    n_seeds, n_res = len(grid["seeds"]), grid["eval"]["n_resamples"]
    note = (f"{grid['track']} track, scale {grid['scale']}, {n_seeds} seeds (per-query mean over seeds), 95% bootstrap CIs "
            f"over test queries ({n_res} resamples), sign-flip p-values vs {reference}, Holm-corrected within the table")
    tables = {}
    for group, title in (("main", "Main results"), ("lambda", "Ablation: lambda_visual"), ("depth", "Ablation: fusion depth")):
        labels = list(dict.fromkeys(e["label"] for e in manifest["entries"] if e["group"] == group))
        if not labels:
            continue
        if group != "main":
            labels = [reference, *labels]
        frame = _table(manifest, data, labels, reference, out)
        tables[group] = frame
        result.tables += write_table(frame, report_dir / "tables" / group, f"{title} ({note}).")
    result.main = tables.get("main")
    result.figures = draw_figures(out, manifest, tables, report_dir / "figures")
    return result
