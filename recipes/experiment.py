"""The paper's experiment grid: train every variant x seed, export to ONNX, evaluate, report.

    load + validate the grid TOML (every problem at once) -> data (synthetic benchmark or the
    Flickr8k import) -> for each run: reuse when its `complete.json` matches its key, else
    train -> export (verified ONNX) -> ONNX Runtime latency + mean attention map -> complete.json
    -> per seed: `fusionguard.gate.evaluation.evaluate` on the test split (per-query results kept)
    -> `fusionguard.recipes.experiment_report.build_report` (tables + figures from the stored files only).

A run's key is the SHA-256 of its resolved training config and the data hashes, so a changed
config or dataset trains again while an unchanged finished run is reused; `complete.json` is
written last, so an interrupted run is redone (the trainer itself resumes from resume.pt).

Layout of OUT:
    data/<dataset>/{train,val,test}.parquet   manifest.json (grid entries -> run keys)
    runs/<run>/{train/, model file <key>.onnx, latency.json, attention.npy, complete.json}
    eval/<dataset>-s<seed>/{table.*, per_query.csv, complete.json}   eval/v1-s<seed>.csv
    report/{tables, figures}
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.config import build, read_toml
from fusionguard.training.config import TrainConfig

logger = logging.getLogger(__name__)

TRACKS = ("synth", "flickr", "emoji")
SCALES = ("small", "full")
EXTRA_VARIANTS = ("late-fusion", "visual-only")  # late fusion (fusionguard.training.late_fusion); baseline on text-masked data
COMPLETE = "complete.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EvalSettings:
    n_resamples: int = 10_000  # bootstrap and sign-flip resamples (policy.bootstrap.n_resamples)
    latency_rows: int = 50  # candidates per timed ONNX Runtime call (one query's worth)
    latency_repeats: int = 50  # timed calls per model; the median is reported
    attention_rows: int = 2000  # test rows averaged into the (head x key) attention map


@dataclass(frozen=True)
class GridConfig:
    """One experiment grid, resolved for one scale."""

    name: str
    track: str  # "synth" (fusionguard.training.synth benchmark), "flickr" (fusionguard.training.flickr import) or "emoji" (fusionguard.training.tracks.emoji_dataset)
    scale: str
    seeds: tuple[int, ...]
    variants: tuple[str, ...]  # main table rows; "v1" is the text-only reference for integrity
    reference: str  # p-values and "beats baseline" are against this variant
    lambda_visual: tuple[float, ...]  # ablation of mitigation.lambda_visual on `lambda_variant`
    lambda_variant: str
    depth: tuple[int, ...]  # ablation of model.depth on `depth_variant`
    depth_variant: str
    train: Mapping[str, Any]  # a TrainConfig table (variant and seed come from the grid)
    data: Mapping[str, Any]  # SynthConfig fields (synth) or FlickrConfig fields (flickr)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class AblationsTable:
    """The grid file's [ablations] table."""

    lambda_visual: tuple[float, ...] = ()  # values of mitigation.lambda_visual on `lambda_variant`
    lambda_variant: str = "mbl"
    depth: tuple[int, ...] = ()  # values of model.depth on `depth_variant`
    depth_variant: str = "progressive"


@dataclass(frozen=True)
class GridFile:
    """A grid TOML as written, after its [scale.<scale>] overrides (`load_grid` resolves it into
    a GridConfig); read by the core's loader, `fusionguard.config.build`."""

    name: str = ""  # default: the file's stem
    track: str = "synth"
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = ()
    reference: str = "baseline"
    ablations: AblationsTable = field(default_factory=AblationsTable)
    train: dict[str, Any] = field(default_factory=dict)  # a TrainConfig table
    data: dict[str, Any] = field(default_factory=dict)  # SynthConfig or FlickrConfig fields
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass(frozen=True)
class RunSpec:
    """One grid entry: a training config on one dataset."""

    label: str  # row label in the tables, e.g. "mbl" or "mbl λ=0.1"
    group: str  # "main", "lambda" or "depth"
    value: float | None  # the ablated value (None in the main group)
    variant: str  # training variant, "late-fusion", or "visual-only"
    seed: int
    dataset: str  # "main" or "visual_only" (text tokens zeroed)
    config: TrainConfig

    @property
    def train_variant(self) -> str:
        return "baseline" if self.variant in EXTRA_VARIANTS else self.variant


# Flickr8k features next to the checkout in the development setup (../shared/data, outside the repository).
DEFAULT_FLICKR_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"

def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def load_grid(path: str | Path, scale: str = "small") -> GridConfig:
    """Read a grid TOML and apply its `[scale.<scale>]` overrides; ConfigError lists every problem."""
    from fusionguard.training.config import VARIANTS

    raw = read_toml(path)
    problems: list[str] = []
    if scale not in SCALES:
        problems.append(f"scale '{scale}' must be one of {list(SCALES)}")
    scales = raw.pop("scale", {})
    raw = _merge(raw, scales.get(scale, {})) if isinstance(scales, Mapping) else raw
    f = build(GridFile, raw, problems)  # unknown keys (did-you-mean) and types; the rules below
    a = f.ablations
    grid = GridConfig(
        name=f.name or Path(path).stem, track=f.track, scale=scale, seeds=f.seeds, variants=f.variants,
        reference=f.reference, lambda_visual=a.lambda_visual, lambda_variant=a.lambda_variant,
        depth=a.depth, depth_variant=a.depth_variant, train=f.train, data=f.data, eval=f.eval,
    )
    allowed = (*VARIANTS, *EXTRA_VARIANTS)
    if grid.track not in TRACKS:
        problems.append(f"track '{grid.track}' must be one of {list(TRACKS)}")
    if len(grid.seeds) < 1 or any(not isinstance(s, int) or s < 0 for s in grid.seeds):
        problems.append(f"seeds {list(grid.seeds)} must be non-negative integers (the paper uses >= 3)")
    bad = [v for v in grid.variants if v not in allowed]
    if bad:
        problems.append(f"unknown variants {bad}; choose from {list(allowed)}")
    if grid.reference not in grid.variants:
        problems.append(f"reference '{grid.reference}' must be one of the variants {list(grid.variants)}")
    for name, variant in (("lambda_variant", grid.lambda_variant), ("depth_variant", grid.depth_variant)):
        if variant not in VARIANTS:
            problems.append(f"ablations.{name} '{variant}' must be a training variant {list(VARIANTS)}")
    problems += data_problems(grid)
    if grid.eval.n_resamples < 100:
        problems.append(f"eval.n_resamples = {grid.eval.n_resamples} must be >= 100")
    if not problems:  # every resolved training config must validate too
        for spec in expand(grid, validate=False):
            try:
                TrainConfig.from_dict(_train_dict(grid, spec.train_variant, spec.seed, spec.group, spec.value))
            except ConfigError as err:
                problems += [f"{spec.label} seed {spec.seed}: {p}" for p in err.problems]
                break
    if problems:
        raise ConfigError(str(path), problems)
    return grid


def data_config(grid: GridConfig) -> Any:
    """The grid's `[data]` table as a SynthConfig (synth), FlickrConfig (flickr) or EmojiConfig (emoji)."""
    if grid.track == "flickr":
        from fusionguard.training.flickr import FlickrConfig as cls
    elif grid.track == "emoji":
        from fusionguard.training.tracks.emoji import EmojiConfig as cls
    else:
        from fusionguard.training.synth import SynthConfig as cls
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in grid.data.items()})


def data_problems(grid: GridConfig) -> list[str]:
    try:
        return [f"data.{p}" for p in data_config(grid).problems()]
    except TypeError as err:
        return [f"[data]: {err}; it holds the fields of fusionguard.training.synth.SynthConfig, fusionguard.training.flickr.FlickrConfig or fusionguard.training.tracks.emoji.EmojiConfig"]


def _train_dict(grid: GridConfig, variant: str, seed: int, group: str, value: float | None) -> dict[str, Any]:
    data = _merge(grid.train, {"variant": variant, "seed": seed, "device": grid.train.get("device", "auto")})
    if group == "lambda":
        data = _merge(data, {"mitigation": {"lambda_visual": value}})
    elif group == "depth":
        data = _merge(data, {"model": {"depth": int(value or 0)}})
    return data


def expand(grid: GridConfig, validate: bool = True) -> list[RunSpec]:
    """Every grid entry (variant x seed, then the ablations x seeds)."""
    specs = []
    entries: list[tuple[str, str, float | None, str]] = [(v, "main", None, v) for v in grid.variants]
    entries += [(f"{grid.lambda_variant} λ={x:g}", "lambda", x, grid.lambda_variant) for x in grid.lambda_visual]
    entries += [(f"{grid.depth_variant} depth={d}", "depth", float(d), grid.depth_variant) for d in grid.depth]
    for label, group, value, variant in entries:
        for seed in grid.seeds:
            train_variant = "baseline" if variant in EXTRA_VARIANTS else variant
            data = _train_dict(grid, train_variant, seed, group, value)
            config = TrainConfig.from_dict(data) if validate else TrainConfig()
            dataset = "visual_only" if variant == "visual-only" else "main"
            specs.append(RunSpec(label, group, value, variant, seed, dataset, config))
    return specs


def run_key(spec: RunSpec, data_hash: str) -> str:
    """Hash of the resolved config, the model kind and the dataset's hash."""
    payload = json.dumps({"config": spec.config.to_dict(), "kind": spec.variant, "data": data_hash}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class RunRecord:
    key: str
    dir: Path
    onnx: Path
    reused: bool
    seconds: float


@dataclass
class ExperimentResult:
    out: Path
    grid: GridConfig
    n_runs: int  # unique runs (entries that resolve to the same key share one)
    trained: int
    reused: int
    seconds: float
    report: Any  # fusionguard.recipes.experiment_report.ReportResult
    exit_code: int = 0

    def summary(self) -> str:
        return (f"experiment '{self.grid.name}' ({self.grid.track}, scale {self.grid.scale}): {self.n_runs} runs "
                f"({self.trained} trained, {self.reused} reused) in {self.seconds:.0f} s\n{self.report.summary()}")


# ----- data -----------------------------------------------------------------------------------------

def _files_hash(directory: Path) -> str:
    from fusionguard.source import dataset_sha256

    return hashlib.sha256("".join(dataset_sha256(directory / f"{s}.parquet") for s in ("train", "val", "test")).encode()).hexdigest()


def derive_visual_only(src: Path, dst: Path) -> Path:
    """Copy a benchmark directory with every `text_tokens` value set to 0 (the visual-only row:
    the query is text, the candidate is seen through its image alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        table = pq.read_table(src / f"{split}.parquet")
        col = table.column("text_tokens")
        flat = pa.array(np.zeros(len(col.combine_chunks().flatten()), dtype=np.float32))
        offsets = col.combine_chunks().offsets
        zeros = pa.ListArray.from_arrays(offsets, flat)
        table = table.set_column(table.schema.get_field_index("text_tokens"), "text_tokens", zeros)
        pq.write_table(table, dst / f"{split}.parquet")
    for meta in src.glob("*.json"):
        (dst / meta.name).write_text(meta.read_text(encoding="utf-8"), encoding="utf-8")
    return dst


def prepare_data(grid: GridConfig, out: Path, data_root: Path | None) -> dict[str, Path]:
    """Write (or reuse) the datasets the grid needs; returns dataset name -> directory."""
    if data_root is None and grid.track == "flickr" and DEFAULT_FLICKR_ROOT.is_dir():
        data_root = DEFAULT_FLICKR_ROOT
    data_dir = out / "data" / "main"
    stamp = data_dir / "source.json"
    want = json.dumps({"track": grid.track, "data": dict(grid.data), "root": str(data_root)}, sort_keys=True)
    if not (stamp.is_file() and stamp.read_text(encoding="utf-8") == want):
        if grid.track == "synth":
            from fusionguard.training.synth import write_benchmark

            write_benchmark(data_config(grid), data_dir)
        elif grid.track == "emoji":
            from fusionguard.training.tracks.emoji_dataset import import_emoji

            if data_root is None:
                raise InvalidInputError("the emoji track needs --data-root pointing at the track's cache "
                                        "(built by python -m fusionguard.training.tracks.emoji --cache DIR)")
            import_emoji(data_root, data_dir, data_config(grid))
        else:
            from fusionguard.training.flickr import import_flickr

            if data_root is None:
                raise InvalidInputError("the flickr track needs --data-root pointing at the Flickr8k feature folder")
            import_flickr(data_root, data_dir, data_config(grid))
        stamp.write_text(want, encoding="utf-8")
    dirs = {"main": data_dir}
    if "visual-only" in grid.variants:
        vo = out / "data" / "visual_only"
        vstamp = vo / "source.json"
        src_hash = _files_hash(data_dir)
        if not (vstamp.is_file() and vstamp.read_text(encoding="utf-8") == src_hash):
            derive_visual_only(data_dir, vo)
            vstamp.write_text(src_hash, encoding="utf-8")
        dirs["visual_only"] = vo
    return dirs


# ----- one run ----------------------------------------------------------------------------------------

def _measure_latency(onnx_path: Path, test: Path, settings: EvalSettings) -> dict[str, float]:
    from fusionguard.dataset import iter_batches
    from fusionguard.scorer import Scorer

    scorer = Scorer(onnx_path, device="cpu", threads=1)
    batch = next(iter_batches(test, scorer.contract, batch_rows=settings.latency_rows))
    feeds = {name: batch.feeds[name][: settings.latency_rows] for name in scorer.contract.input_names}
    for _ in range(5):
        scorer.run(feeds)
    times = []
    for _ in range(settings.latency_repeats):
        t0 = time.perf_counter()
        scorer.run(feeds)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(times)), "p90_ms": 1e3 * float(np.quantile(times, 0.9)),
            "rows": int(len(batch.label[: settings.latency_rows])), "repeats": settings.latency_repeats, "threads": 1,
            "provider": scorer.provider}


def _attention_map(onnx_path: Path, test: Path, settings: EvalSettings) -> np.ndarray | None:
    from fusionguard.dataset import iter_batches
    from fusionguard.scorer import Scorer

    scorer = Scorer(onnx_path, device="cpu", threads=1)
    if not scorer.contract.attention_keys:
        return None
    batch = next(iter_batches(test, scorer.contract, batch_rows=settings.attention_rows))
    out = scorer.run({n: batch.feeds[n] for n in scorer.contract.input_names})[0]
    return None if out.attention is None else out.attention.mean(axis=0)  # (H, K)


def _log_mlflow(uri: str, experiment: str, spec: RunSpec, key: str, run_dir: Path, onnx_path: Path, extra: Mapping[str, Any]) -> None:
    from fusionguard.training.tracking import log_run

    log_run(uri, experiment, f"{spec.label}-s{spec.seed}", spec.config.to_dict() | {"kind": spec.variant, "run_key": key},
            run_dir / "train" / "train_log.jsonl", onnx_path, extra)


def execute_run(spec: RunSpec, key: str, data_dir: Path, run_dir: Path, grid: GridConfig, mlflow_uri: str | None, progress: bool) -> RunRecord:
    """Train, export and measure one run, or reuse it when complete.json holds the same key."""
    onnx_path = run_dir / f"{key[:12]}.onnx"
    marker = run_dir / COMPLETE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key and onnx_path.is_file():
        return RunRecord(key, run_dir, onnx_path, True, 0.0)
    from fusionguard.export.pipeline import ExportConfig
    from fusionguard.recipes.exporting import export_checkpoint

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    export_cfg = ExportConfig(batch_sizes=(1, 50), parity_rows=128, threads=1)
    train_dir = run_dir / "train"
    from fusionguard.training.trainer import train

    # late fusion is an ordinary training variant; the grid carries it as an extra row label
    config = replace(spec.config, variant="late-fusion") if spec.variant == "late-fusion" else spec.config
    train(config, data_dir, train_dir, progress=progress)
    exported = export_checkpoint(train_dir, onnx_path, export_cfg)
    test = data_dir / "test.parquet"
    latency = _measure_latency(onnx_path, test, grid.eval)
    (run_dir / "latency.json").write_text(json.dumps(latency, indent=2), encoding="utf-8")
    attention = _attention_map(onnx_path, test, grid.eval)
    if attention is not None:
        np.save(run_dir / "attention.npy", attention)
    result = json.loads((train_dir / "result.json").read_text(encoding="utf-8"))
    if mlflow_uri:
        _log_mlflow(mlflow_uri, grid.name, spec, key, run_dir, onnx_path, {"latency_ms": latency["median_ms"]})
    seconds = time.perf_counter() - t0
    record = {"key": key, "label": spec.label, "variant": spec.variant, "seed": spec.seed, "dataset": spec.dataset,
              "config": spec.config.to_dict(), "onnx": onnx_path.name, "max_abs_diff": exported.max_abs_diff,
              "train_result": result, "latency": latency, "seconds": seconds}
    marker.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")  # last: the run is complete
    return RunRecord(key, run_dir, onnx_path, False, seconds)


# ----- evaluation -------------------------------------------------------------------------------------

def _eval_policy(grid: GridConfig, n_test_queries: int):
    from fusionguard.gate.policy import Policy, with_overrides

    return with_overrides(Policy(), bootstrap={"n_resamples": grid.eval.n_resamples},
                          scoring={"device": "cpu", "threads": 1}, data={"min_queries": min(20, n_test_queries)})


def evaluate_seed(name: str, models: list[Path], test: Path, v1: Path | None, out: Path, grid: GridConfig) -> Path:
    """`fusionguard.gate.evaluation.evaluate` on one dataset and seed (reused when the model set is unchanged)."""
    from fusionguard.metrics import QueryGroups
    from fusionguard.gate.evaluation import evaluate, write_eval

    out_dir = out / "eval" / name
    key = hashlib.sha256(json.dumps([p.name for p in models] + [v1.name if v1 else "", grid.eval.n_resamples]).encode()).hexdigest()
    marker = out_dir / COMPLETE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key:
        return out_dir
    from fusionguard.dataset import load_dataset

    ids = load_dataset(test, inputs=[])
    n_q = QueryGroups.from_arrays(ids.query_id, ids.item_id, ids.label).n_queries
    result = evaluate(models, test, baseline=v1, policy=_eval_policy(grid, n_q))
    marker.unlink(missing_ok=True)
    write_eval(result, out_dir)
    marker.write_text(json.dumps({"key": key, "models": [str(p) for p in models]}), encoding="utf-8")
    return out_dir


def score_text_only(v1: Path, test: Path, out_csv: Path) -> Path:
    """Per-query NDCG@10 of the text-only V1 (the offline evaluation measures fusion models only)."""
    from fusionguard.metrics import QueryGroups, ndcg_at_k
    from fusionguard.scorer import Scorer

    scorer = Scorer(v1, device="cpu", threads=1)
    scored = scorer.score_dataset(test, keep_attention=False)
    groups = QueryGroups.from_arrays(scored.query_id, scored.item_id, scored.label)
    ndcg = ndcg_at_k(groups, next(iter(scored.scores.values())), k=10)
    import pandas as pd

    out_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"model": v1.stem, "query_id": groups.query_ids.astype(str), "ndcg": ndcg}).to_csv(out_csv, index=False)
    return out_csv


def run_experiment(config: str | Path, out: str | Path, scale: str = "small", mlflow_uri: str | None = None,
                   data_root: str | Path | None = None, progress: bool = True) -> ExperimentResult:
    """Run (or resume) the grid in `config` into `out` and build its report. See the module docstring.

    Raises:
        ConfigError: the grid or a resolved training config has problems (all listed).
        InvalidInputError: the data root is missing (flickr track).
    """
    from tqdm import tqdm

    from fusionguard.recipes.experiment_report import build_report

    grid = load_grid(config, scale)
    if mlflow_uri:
        from fusionguard.training.tracking import require_mlflow

        require_mlflow()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = prepare_data(grid, out, Path(data_root) if data_root else None)
    hashes = {name: _files_hash(d) for name, d in dirs.items()}
    specs = expand(grid)
    keyed = [(spec, run_key(spec, hashes[spec.dataset])) for spec in specs]
    unique: dict[str, RunSpec] = {}
    for spec, key in keyed:
        unique.setdefault(key, spec)
    records: dict[str, RunRecord] = {}
    bar = tqdm(unique.items(), desc=f"grid {grid.name}", disable=not progress, unit="run")
    for key, spec in bar:
        bar.set_postfix_str(f"{spec.label} s{spec.seed}")
        run_dir = out / "runs" / f"{spec.label.replace(' ', '_').replace('λ=', 'lambda')}-s{spec.seed}-{key[:8]}"
        records[key] = execute_run(spec, key, dirs[spec.dataset], run_dir, grid, mlflow_uri, progress)
    manifest = {"grid": asdict(grid), "grid_sha256": grid.sha256(), "data": {k: str(v) for k, v in dirs.items()},
                "entries": [{"label": s.label, "group": s.group, "value": s.value, "variant": s.variant, "seed": s.seed,
                             "dataset": s.dataset, "key": k, "run_dir": str(records[k].dir.relative_to(out)),
                             "model": records[k].onnx.stem} for s, k in keyed]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    for seed in tqdm(grid.seeds, desc="evaluate", disable=not progress, unit="seed"):
        v1 = next((records[k].onnx for s, k in keyed if s.variant == "v1" and s.seed == seed), None)
        if v1 is not None:
            score_text_only(v1, dirs["main"] / "test.parquet", out / "eval" / f"v1-s{seed}.csv")
        for dataset, ddir in dirs.items():
            models = list(dict.fromkeys(records[k].onnx for s, k in keyed
                                        if s.seed == seed and s.dataset == dataset and s.variant != "v1"))
            ref = next((records[k].onnx for s, k in keyed if s.seed == seed and s.label == grid.reference), None)
            if ref in models:  # the reference first: fusionguard.gate.evaluation tests every model against the first
                models.remove(ref)
                models.insert(0, ref)
            if models:
                evaluate_seed(f"{dataset}-s{seed}", models, ddir / "test.parquet", v1 if dataset == "main" else None, out, grid)
    report = build_report(out)
    trained = sum(not r.reused for r in records.values())
    return ExperimentResult(out, grid, len(records), trained, len(records) - trained, time.perf_counter() - t0, report)

