"""The collapse protocol: a fixed grid (generator seeds x training seeds) of warm-started V2 runs.

    load_protocol(protocol.toml) -> for each generator seed: the synthetic benchmark and one
    production V1 (cached in WORK) -> for each (variant, training seed): train V2 warm-started
    from that V1 under the protocol's budget -> test with the best-validation checkpoint ->
    one JSON record per run (appended to a JSONL file; a rerun skips the records it holds)
    -> `summarize` turns the records into per-variant rows with seed-level statistics.

A record keeps what a reviewer needs to recompute every number: per-query test NDCG@10 and
visual ablation drop, the mean per-query Spearman with V1, the verdicts under the protocol's
criteria, and the per-epoch evidence (per-modality gradient norms, per-head visual attention mass
and entropy on val).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard import stats
from fusionguard.errors import ConfigError
from fusionguard.training.config import VARIANTS, TrainConfig, read_toml

CONTROLS = ("baseline-scratch",)
NO_WARM_START = ("late-fusion",)  # shares no parameter name with V1: cannot be warm-started, trains under [train]  # the V2 baseline trained from scratch (no warm start): the mechanism's control
HISTORY_KEYS = ("epoch", "loss", "task_loss", "grad_norm_text", "grad_norm_visual", "grad_ratio_visual_text", "val_ndcg",
                "val_visual_drop", "val_text_drop", "val_visual_attention_mass", "val_attention_entropy",
                "val_visual_attention_mass_per_head", "val_attention_entropy_per_head", "train_s")


@dataclass(frozen=True)
class Criteria:
    collapse_max_visual_drop: float = 0.01
    collapse_min_spearman_v1: float = 0.99
    escape_min_visual_drop: float = 0.10
    collapse_share_required: float = 0.80


@dataclass(frozen=True)
class Protocol:
    name: str
    mechanism: str
    generator_seeds: tuple[int, ...]
    training_seeds: tuple[int, ...]
    v1_seed: int
    variants: tuple[str, ...]
    reference: str
    criteria: Criteria
    train: Mapping[str, Any]
    warm: Mapping[str, Any]  # warm-started runs: "init" (TrainConfig.warm_start_init) and optim overrides ({} = the same recipe)
    long: Mapping[str, Any]
    data: Mapping[str, Any]
    v1: Mapping[str, Any] = field(default_factory=dict)  # optim overrides for the production V1 ({} = the [train] budget)
    n_resamples: int = 10_000
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def train_config(self, variant: str, seed: int, warm_start_from: str, long: bool = False) -> TrainConfig:
        data = json.loads(json.dumps(dict(self.train)))
        data.update(variant=variant, seed=seed, warm_start_from=warm_start_from)
        if variant == "v1" and self.v1:
            data["optim"] = {**data.get("optim", {}), **self.v1}
        if warm_start_from:
            warm = dict(self.warm)
            data["warm_start_init"] = warm.pop("init", "fresh")
            data["warm_start_freeze"] = warm.pop("freeze", "none")
            data["optim"] = {**data.get("optim", {}), **warm}
        if long:
            data["optim"] = {**data.get("optim", {}), **self.long}
        return TrainConfig.from_dict(data, source=self.source)


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol TOML; ConfigError lists every problem."""
    raw = read_toml(path)
    known = {"name", "mechanism", "generator_seeds", "training_seeds", "v1_seed", "variants", "reference", "criteria",
             "train", "warm", "long", "data", "eval", "v1"}
    problems = [f"unknown key '{k}'; known keys: {sorted(known)}" for k in sorted(set(raw) - known)]
    try:
        criteria = Criteria(**raw.get("criteria", {}))
    except TypeError as err:
        problems.append(f"[criteria]: {err}")
        criteria = Criteria()
    protocol = Protocol(
        name=str(raw.get("name", Path(path).stem)), mechanism=str(raw.get("mechanism", "warm_start_from_v1")),
        generator_seeds=tuple(raw.get("generator_seeds", (0,))), training_seeds=tuple(raw.get("training_seeds", (0,))),
        v1_seed=int(raw.get("v1_seed", 0)), variants=tuple(raw.get("variants", ("baseline",))),
        reference=str(raw.get("reference", "baseline")), criteria=criteria, train=raw.get("train", {}),
        warm=raw.get("warm", {}), long=raw.get("long", {}), v1=raw.get("v1", {}), data=raw.get("data", {}), n_resamples=int(raw.get("eval", {}).get("n_resamples", 10_000)),
        source=str(path),
    )
    from fusionguard.training.clicks import LABEL_SOURCES

    if label_source(protocol) not in LABEL_SOURCES:
        problems.append(f"[data] label_source = '{label_source(protocol)}' must be one of {list(LABEL_SOURCES)}")
    bad = [v for v in protocol.variants if v not in VARIANTS or v == "v1"]
    if bad:
        problems.append(f"variants {bad} must be V2 training variants {[v for v in VARIANTS if v != 'v1']}")
    if protocol.reference not in protocol.variants:
        problems.append(f"reference '{protocol.reference}' must be one of the variants")
    for name in ("generator_seeds", "training_seeds"):
        seeds = getattr(protocol, name)
        if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
            problems.append(f"{name} {list(seeds)} must be non-negative integers")
    if not problems:
        try:
            protocol.train_config("baseline", 0, "")
            protocol.train_config("baseline", 0, "x", long=True)
            protocol.train_config("v1", 0, "")
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(str(path), problems)
    return protocol


def label_source(protocol: Protocol) -> str:
    """Where the V2's train/val labels come from: "editorial" (the generator's true grades, the
    default) or "v1_clicks" (the production V1's logged clicks, `fusionguard.training.clicks`)."""
    return str(protocol.data.get("label_source", "editorial"))


def _data(protocol: Protocol, gen_seed: int, work: Path) -> Path:
    from fusionguard.training.synth import SynthConfig, write_benchmark

    out = work / f"data-g{gen_seed}"
    if not (out / "test.parquet").is_file():
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in protocol.data.items() if k != "label_source"}
        write_benchmark(SynthConfig(**{**cfg, "seed": gen_seed}), out)
    return out


def _click_data(gen_seed: int, editorial: Path, v1_dir: Path, work: Path) -> Path:
    from fusionguard.training.clicks import write_click_benchmark

    out = work / f"data-g{gen_seed}-v1-clicks"
    if not (out / "test.parquet").is_file():  # test.parquet is written last: its presence means complete
        write_click_benchmark(editorial, v1_dir, out, gen_seed)
    return out


def _v1(protocol: Protocol, gen_seed: int, data: Path, work: Path) -> Path:
    from fusionguard.training.trainer import RESULT_FILE, train

    out = work / f"v1-g{gen_seed}"
    if not (out / RESULT_FILE).is_file():
        train(protocol.train_config("v1", protocol.v1_seed, ""), data, out, progress=False, resume=False)
    return out


def prepare(protocol: Protocol, gen_seed: int, work: str | Path) -> tuple[Path, Path]:
    """One generator seed's data and production V1 under WORK/<protocol name> (made once, then
    reused). The V1 always trains on the editorial labels; with label_source "v1_clicks" the
    returned data directory holds its logged clicks as train/val labels (test unchanged)."""
    work = Path(work) / protocol.name  # each protocol its own data, V1 and runs
    data = _data(protocol, gen_seed, work)
    v1_dir = _v1(protocol, gen_seed, data, work)
    if label_source(protocol) == "v1_clicks":
        data = _click_data(gen_seed, data, v1_dir, work)
    return data, v1_dir


def run_cell(protocol: Protocol, variant: str, gen_seed: int, train_seed: int, work: str | Path, long: bool = False) -> dict[str, Any]:
    """Train and test one run of the grid; returns its record (see the module docstring)."""
    import torch

    from fusionguard.metrics import ablation_drop, ndcg_at_k, spearman_per_query
    from fusionguard.training.checkpoint import load_checkpoint
    from fusionguard.training.data import load_split, read_dims
    from fusionguard.training.diagnostics import score_split
    from fusionguard.training.trainer import train

    data, v1_dir = prepare(protocol, gen_seed, work)
    work = Path(work) / protocol.name
    train_variant = "baseline" if variant in CONTROLS else variant
    # a control, or an architecture with no parameter in common with V1 (late fusion), trains from scratch
    warm = "" if variant in CONTROLS or variant in NO_WARM_START else str(v1_dir)
    config = protocol.train_config(train_variant, train_seed, warm, long=long)
    out = work / f"{variant}-g{gen_seed}-s{train_seed}{'-long' if long else ''}"
    t0 = time.perf_counter()
    result = train(config, data, out, progress=False, resume=False)
    seconds = time.perf_counter() - t0
    dims = read_dims(data)
    test = load_split(data / "test.parquet", dims, with_visual=True)
    k = config.diagnostics.ndcg_k
    with torch.no_grad():
        scores = score_split(load_checkpoint(out).model, test, config.diagnostics.mask)
        v1_scores = score_split(load_checkpoint(v1_dir).model, load_split(data / "test.parquet", dims, with_visual=False), config.diagnostics.mask)
    ndcg = ndcg_at_k(test.groups, np.stack([scores.full, scores.visual_masked]), k=k)
    visual_drop = ablation_drop(ndcg[0], ndcg[1])
    spearman = float(np.nanmean(spearman_per_query(test.groups, scores.full, v1_scores.full)))
    c = protocol.criteria
    drop = float(np.nanmean(visual_drop))
    val_drops = [h.get("val_visual_drop") for h in result.history]
    escape_epoch = next((h["epoch"] for h in result.history if (h.get("val_visual_drop") or 0) >= c.escape_min_visual_drop), None)
    return {
        "protocol": protocol.name, "variant": variant, "generator_seed": gen_seed, "training_seed": train_seed, "long": long,
        "label_source": label_source(protocol), "warm_start_from": warm, "warm_loaded": len(result.warm_start["loaded"]) if result.warm_start else 0,
        "ndcg": float(np.nanmean(ndcg[0])), "visual_drop": drop, "spearman_v1": spearman,
        "text_drop": result.test["text_drop"], "visual_attention_mass": result.test["visual_attention_mass"],
        "attention_entropy": result.test["attention_entropy"],
        "collapsed": drop < c.collapse_max_visual_drop and spearman >= c.collapse_min_spearman_v1,
        "escaped": drop >= c.escape_min_visual_drop,
        "first_val_escape_epoch": escape_epoch, "max_val_visual_drop": max((d for d in val_drops if d is not None), default=None),
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "seconds": seconds,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "v1_final_train_loss": _last_loss(v1_dir), "v1_epochs": _epochs(v1_dir),
        "v1_test_ndcg": float(np.nanmean(ndcg_at_k(test.groups, v1_scores.full[None, :], k=k)[0])),
        "per_query_ndcg": ndcg[0].tolist(), "per_query_visual_drop": np.asarray(visual_drop, dtype=float).tolist(),
        "history": [{key: h.get(key) for key in HISTORY_KEYS} for h in result.history],
    }


def _log(directory: Path) -> list[dict[str, Any]]:
    from fusionguard.training.trainer import LOG_FILE

    path = directory / LOG_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def _last_loss(directory: Path) -> float | None:
    """The V1's mean training task loss in its last epoch (how far it fitted its training data)."""
    log = _log(directory)
    return float(log[-1].get("task_loss", log[-1].get("loss"))) if log else None


def _epochs(directory: Path) -> int:
    return len(_log(directory))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_key(r: Mapping[str, Any]) -> tuple[int, int]:
    return (int(r["generator_seed"]), int(r["training_seed"]))


def summarize(records: list[dict[str, Any]], protocol: Protocol, long: bool = False) -> list[dict[str, Any]]:
    """Per variant: runs, collapse and escape shares with exact binomial CIs (Fisher vs the
    reference), epochs to escape, NDCG@10 and visual drop with hierarchical (run, then query)
    bootstrap CIs and seed SDs, the paired difference to the reference (runs matched by generator
    and training seed) with its seed-level sign-flip test; Holm across variants for each test."""
    rows: list[dict[str, Any]] = []
    by_variant: dict[str, dict[tuple[int, int], dict]] = {}
    for r in records:
        if bool(r.get("long", False)) == long:
            by_variant.setdefault(r["variant"], {})[_run_key(r)] = r
    ref = by_variant.get(protocol.reference, {})
    n_res = protocol.n_resamples
    for variant, runs in by_variant.items():
        keys = sorted(runs)
        n = len(keys)
        collapsed = sum(bool(runs[k]["collapsed"]) for k in keys)
        escaped = sum(bool(runs[k]["escaped"]) for k in keys)
        c = protocol.criteria
        row: dict[str, Any] = {"variant": variant, "runs": n, "generator_seeds": sorted({k[0] for k in keys}),
                               "collapsed": collapsed, "escaped": escaped,
                               # the two halves of the collapse criterion, counted apart
                               "drop_below": sum(runs[k]["visual_drop"] < c.collapse_max_visual_drop for k in keys),
                               "spearman_above": sum(runs[k]["spearman_v1"] >= c.collapse_min_spearman_v1 for k in keys)}
        for name, k in (("collapse", collapsed), ("escape", escaped)):
            ci = stats.binomial_ci(k, n)
            row[f"{name}_share"], row[f"{name}_low"], row[f"{name}_high"] = ci.estimate, ci.low, ci.high
        epochs = [runs[k]["first_val_escape_epoch"] for k in keys if runs[k]["first_val_escape_epoch"] is not None]
        row["epochs_to_escape_median"] = float(np.median(epochs)) if epochs else None
        # cost per run on a 2-core machine like CI's: runs made elsewhere (the GPU machine's 16
        # cores, 14 runs at a time) are left out; records without a machine field were made here
        two_core = [runs[k]["seconds"] for k in keys if " 2 cpus" in runs[k].get("machine", " 2 cpus")]
        row["seconds_2core_median"] = float(np.median(two_core)) if two_core else None
        row["runs_2core"] = len(two_core)
        row["epochs_run_mean"] = float(np.mean([runs[k]["epochs_run"] for k in keys]))
        for metric in ("ndcg", "visual_drop", "spearman_v1"):
            seed_values = np.array([runs[k][metric] for k in keys], dtype=float)
            row[f"{metric}_mean"] = float(np.mean(seed_values))
            row[f"{metric}_seed_sd"] = float(np.std(seed_values, ddof=1)) if n > 1 else None
        for metric, column in (("ndcg", "per_query_ndcg"), ("visual_drop", "per_query_visual_drop")):
            matrix = _padded([runs[k][column] for k in keys])
            if n > 1:
                iv = stats.hierarchical_bootstrap_ci(matrix, settings=stats.BootstrapSettings(n_resamples=n_res))
                row[f"{metric}_low"], row[f"{metric}_high"] = iv.low, iv.high
            shared = [k for k in keys if k in ref]
            if variant != protocol.reference and len(shared) > 1:
                diff = _padded([np.asarray(runs[k][column], float) - np.asarray(ref[k][column], float) for k in shared])
                seed_diff = np.array([runs[k][metric] - ref[k][metric] for k in shared])
                iv = stats.hierarchical_bootstrap_ci(diff, settings=stats.BootstrapSettings(n_resamples=n_res))
                row[f"delta_{metric}"], row[f"delta_{metric}_low"], row[f"delta_{metric}_high"] = iv.estimate, iv.low, iv.high
                row[f"delta_{metric}_seed_sd"] = float(np.std(seed_diff, ddof=1))
                row[f"p_{metric}"] = stats.seed_level_test(seed_diff, seed=0)  # stats.SEED_TEST_RESAMPLES sign flips, not the bootstrap's
                row["paired_runs"] = len(shared)
        if variant != protocol.reference and ref:
            ref_keys = sorted(ref)
            row["p_escape"] = stats.fisher_exact(escaped, n, sum(bool(ref[k]["escaped"]) for k in ref_keys), len(ref_keys))
        rows.append(row)
    for test in ("ndcg", "visual_drop", "escape"):
        idx = [i for i, r in enumerate(rows) if f"p_{test}" in r]
        if idx:
            for i, p in zip(idx, stats.holm([rows[i][f"p_{test}"] for i in idx])):
                rows[i][f"p_holm_{test}"] = float(p)
    order = {v: i for i, v in enumerate((protocol.reference, *CONTROLS, *protocol.variants))}
    return sorted(rows, key=lambda r: order.get(r["variant"], len(order)))


def _padded(vectors: list) -> np.ndarray:
    width = max(len(v) for v in vectors)
    out = np.full((len(vectors), width), np.nan)
    for i, v in enumerate(vectors):
        out[i, : len(v)] = np.asarray(v, dtype=float)
    return out
