"""The paper's figures (PNG + PDF, matplotlib Agg), drawn from stored result files and tables.

attention.{png,pdf}    mean attention (head x key) of the reference and of the attention-based
                       mitigations, first seed, test rows; a line marks the text|visual key boundary
grad_norms.{png,pdf}   per-epoch visual/text gradient-norm ratio from each run's train_log.jsonl,
                       then one panel per modality (grad_norm_text, grad_norm_visual)
sweeps.{png,pdf}       NDCG@10 and visual ablation drop (95% CI) against lambda_visual and depth
latency.{png,pdf}      NDCG@10 (95% CI) against ONNX Runtime latency (median over seeds) per variant
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _save(fig, directory: Path, name: str) -> list[Path]:
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def _first_seed_entry(manifest: dict, label: str) -> dict | None:
    entries = sorted((e for e in manifest["entries"] if e["label"] == label), key=lambda e: e["seed"])
    return entries[0] if entries else None


def _attention(out: Path, manifest: dict, main_labels: list[str], directory: Path, plt) -> list[Path]:
    from matplotlib.ticker import MaxNLocator

    from fusionguard.contract import load_contract

    shown = []
    for label in main_labels:
        entry = _first_seed_entry(manifest, label)
        path = out / entry["run_dir"] / "attention.npy" if entry else None
        if path is not None and path.is_file():
            keys = load_contract(out / entry["run_dir"] / f"{entry['model']}.onnx").attention_keys
            shown.append((label, np.load(path), keys))
    if not shown:
        return []
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), squeeze=False)
    fused = [a for _, a, k in shown if "visual" in k] or [a for _, a, _ in shown]
    vmax = max(float(a.max()) for a in fused)  # one scale for the fusion models (a text-only panel saturates)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, (label, att, keys) in zip(axes.flat, shown):
        im = ax.imshow(att, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        if "visual" in keys:
            ax.axvline(keys["visual"][0] - 0.5, color="white", lw=1.5)
            mass = float(att[:, keys["visual"][0] : keys["visual"][1]].sum(axis=1).mean())
            ax.set_title(f"{label}\nvisual mass {mass:.2f}", fontsize=9)
        else:
            ax.set_title(f"{label}\n(text keys only)", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("key (text | visual)")
        ax.set_ylabel("head")
    fig.suptitle("mean attention per head over the keys (first seed, test rows); white line: text | visual", fontsize=10)
    fig.tight_layout()
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="mean attention")
    paths = _save(fig, directory, "attention")
    plt.close(fig)
    return paths


def _grad_norms(out: Path, manifest: dict, main_labels: list[str], directory: Path, plt) -> list[Path]:
    logs = []
    for label in main_labels:
        entry = _first_seed_entry(manifest, label)
        path = out / entry["run_dir"] / "train" / "train_log.jsonl" if entry else None
        if path is not None and path.is_file():
            logs.append((label, pd.DataFrame([json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x])))
    if not logs:
        return []
    modalities = [m for m in ("text", "visual") if any(f"grad_norm_{m}" in f for _, f in logs)]
    n = 1 + len(modalities)  # the ratio, then one panel per modality (trainer logs grad_norm_<modality>)
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.8), squeeze=False)
    ax = axes[0][0]
    for j, (label, f) in enumerate(logs):  # colour C{j} is the same run in every panel
        if "grad_ratio_visual_text" in f:
            ax.plot(f["epoch"], f["grad_ratio_visual_text"], marker="o", ms=3, color=f"C{j % 10}", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖∇ visual‖ / ‖∇ text‖ (epoch mean)")
    ax.set_title("visual/text gradient-norm ratio", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    for i, modality in enumerate(modalities, start=1):
        ax = axes[0][i]
        for j, (label, f) in enumerate(logs):
            if f"grad_norm_{modality}" in f:
                ax.plot(f["epoch"], f[f"grad_norm_{modality}"], marker="o", ms=3, color=f"C{j % 10}", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"‖∇ {modality}‖ (epoch mean)")
        ax.set_title(f"{modality} encoder gradient norm", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = _save(fig, directory, "grad_norms")
    plt.close(fig)
    return paths


def _sweeps(tables: dict[str, pd.DataFrame], manifest: dict, directory: Path, plt) -> list[Path]:
    sweeps = [(g, t) for g, t in tables.items() if g in ("lambda", "depth")]
    if not sweeps:
        return []
    reference = manifest["grid"]["reference"]
    values = {e["label"]: e["value"] for e in manifest["entries"] if e["group"] in ("lambda", "depth")}
    fig, axes = plt.subplots(len(sweeps), 2, figsize=(9.0, 3.2 * len(sweeps)), squeeze=False)
    for row, (group, table) in zip(axes, sweeps):
        ref = table[table["row"] == reference].iloc[0]
        sweep = table[table["row"] != reference].assign(x=lambda t: [values[r] for r in t["row"]]).sort_values("x")
        for ax, col, name in ((row[0], "ndcg@10", "NDCG@10"), (row[1], "visual_drop", "visual ablation drop")):
            err = np.vstack([sweep[col] - sweep[f"{col}_low"], sweep[f"{col}_high"] - sweep[col]])
            ax.errorbar(sweep["x"], sweep[col], yerr=err, marker="o", capsize=3, label=table["row"].iloc[1].split(" ")[0])
            ax.axhline(ref[col], color="grey", ls=":", label=f"{reference} (reference)")
            ax.set_xlabel("λ_visual" if group == "lambda" else "fusion depth")
            ax.set_ylabel(name)
            ax.set_xticks(sweep["x"])
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths = _save(fig, directory, "sweeps")
    plt.close(fig)
    return paths


def _latency(table: pd.DataFrame | None, directory: Path, plt) -> list[Path]:
    if table is None:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    markers = "osD^vP*Xph<>"
    for i, (_, r) in enumerate(table.iterrows()):  # one colour + marker per row, named in the legend
        err = [[r["ndcg@10"] - r["ndcg@10_low"]], [r["ndcg@10_high"] - r["ndcg@10"]]]
        ax.errorbar([r["latency_ms"]], [r["ndcg@10"]], yerr=err, fmt=markers[i % len(markers)], ms=7, capsize=3,
                    color=plt.cm.tab10(i % 10), label=r["row"])
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("ONNX Runtime latency per 50-candidate request (ms, CPU, 1 thread, median)")
    ax.set_ylabel("NDCG@10 (95% CI)")
    ax.grid(alpha=0.3)
    paths = _save(fig, directory, "latency")
    plt.close(fig)
    return paths


def draw_figures(out: Path, manifest: dict, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    main_labels = list(dict.fromkeys(e["label"] for e in manifest["entries"] if e["group"] == "main"))
    paths = _attention(out, manifest, main_labels, directory, plt)
    paths += _grad_norms(out, manifest, main_labels, directory, plt)
    paths += _sweeps(tables, manifest, directory, plt)
    paths += _latency(tables.get("main"), directory, plt)
    return paths
