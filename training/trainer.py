"""The trainer: one loop, read top to bottom.

    validate config + data (every problem at once) -> load splits -> build model, optimizer
    -> (resume if OUT/resume.pt exists) -> per epoch: train steps (variant's loss and gradient
    treatment, fusionguard.training.mitigations) -> diagnostics on val -> JSONL log line -> best checkpoint / early stopping
    -> reload the best checkpoint, evaluate on test, write OUT/result.json.

Determinism: every epoch's shuffling, dropout plans and OGM-GE noise come from generators seeded
with (seed, epoch), so a resumed run follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fusionguard.source import dataset_sha256
from fusionguard.errors import ConfigError
from fusionguard.training import mitigations
from fusionguard.training.checkpoint import load_checkpoint, load_resume_state, save_checkpoint, save_resume_state, warm_start
from fusionguard.training.config import TrainConfig, config_problems
from fusionguard.training.data import Split, data_problems, load_split, read_dims
from fusionguard.training.diagnostics import head_attention, modality_grad_norms, score_split, summarize
from fusionguard.training.late_fusion import VARIANT as LATE_FUSION
from fusionguard.training.models import Ranker, build_model

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
RESULT_FILE = "result.json"


@dataclass
class TrainResult:
    out: Path
    variant: str
    epochs_run: int
    best_epoch: int
    best_val_ndcg: float
    test: dict[str, float | None]  # summarize() on the test split with the best checkpoint
    train_seconds: float  # wall time of the whole run
    examples_per_s: float  # training rows per second of optimisation (diagnostics excluded)
    diagnostics_share: float  # diagnostics time / (train + diagnostics) time, over all epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    warm_start: dict[str, Any] | None = None  # checkpoint.warm_start's record when config.warm_start_from is set

    def summary(self) -> str:
        t = self.test
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        return (
            f"{self.variant}: best epoch {self.best_epoch}/{self.epochs_run}, val NDCG@10 {self.best_val_ndcg:.4f}\n"
            f"test NDCG@10 {fmt(t['ndcg'])}, visual ablation drop {fmt(t['visual_drop'])}, "
            f"text ablation drop {fmt(t['text_drop'])}, visual attention mass {fmt(t['visual_attention_mass'])}\n"
            f"{self.train_seconds:.1f} s, {self.examples_per_s:.0f} examples/s, "
            f"diagnostics {100 * self.diagnostics_share:.1f}% of epoch time; checkpoint in {self.out}"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", ["device 'cuda' was asked for but torch sees no CUDA device; use --device cpu or auto"])
    return torch.device(name)


def validate_run(config: TrainConfig, data_dir: str | Path, source: str = "config") -> None:
    """Raise one ConfigError listing every problem of the config and the data directory."""
    problems = config_problems(config) + data_problems(data_dir, needs_visual=config.variant != "v1")
    if config.warm_start_from and not (Path(config.warm_start_from) / "model.pt").is_file():
        problems.append(f"warm_start_from = '{config.warm_start_from}' is not a checkpoint directory (no model.pt); "
                        "train the source model first, e.g. fusionguard train --variant v1")
    if problems:
        raise ConfigError(source, problems)


def freeze(model: Ranker, what: str, loaded: list[str]) -> list[str]:
    """Stop gradients to the frozen part of a warm-started model (TrainConfig.warm_start_freeze);
    returns the frozen parameter names. AdamW skips parameters without a gradient, weight decay
    included, so a frozen parameter keeps its loaded value exactly."""
    if what == "text-tower":
        ids = {id(p) for p in model.encoder_parameters()["text"]}
        names = [n for n, p in model.named_parameters() if id(p) in ids]
    else:
        names = [n for n, _ in model.named_parameters() if n in set(loaded)]
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(False)
    return names


def make_optimizer(model: Ranker, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (the recipe) or SGD with momentum 0.9 (the optimizer of the released OGM-GE, AGM, PMR
    and MMPareto code). Gradient-scaling methods need the distinction: Adam divides each update by
    a running RMS of the gradient (β2 = 0.999, a horizon of ~1,000 steps), so a coefficient k that
    stays roughly constant is largely normalised away, while SGD's step is proportional to k."""
    o = config.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _batches(split: Split, batch_queries: int, gen: torch.Generator):
    """Yield (row index, group index within the batch, n_groups) for shuffled query batches."""
    order = torch.randperm(split.n_queries, generator=gen)
    sizes = torch.from_numpy(np.diff(split.offsets))
    starts = torch.from_numpy(split.offsets[:-1])
    for i in range(0, split.n_queries, batch_queries):
        qs = order[i : i + batch_queries]
        rows = torch.cat([torch.arange(int(starts[q]), int(starts[q] + sizes[q])) for q in qs])
        group = torch.repeat_interleave(torch.arange(len(qs)), sizes[qs])
        yield rows, group, len(qs)


def train(config: TrainConfig, data_dir: str | Path, out: str | Path, progress: bool = True, resume: bool = True) -> TrainResult:
    """Train `config.variant` on the benchmark in `data_dir`; checkpoints and logs go to `out`.

    Raises:
        ConfigError: the config or the data directory has problems (all listed).
    """
    validate_run(config, data_dir)
    data_dir, out = Path(data_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    with_visual = config.variant != "v1"
    dims = read_dims(data_dir)
    train_split = load_split(data_dir / "train.parquet", dims, with_visual).to(device)
    val_split = load_split(data_dir / "val.parquet", dims, with_visual).to(device)
    model = build_model(config.variant, dims, config.model).to(device)
    warm = warm_start(model, config.warm_start_from, config.warm_start_init) if config.warm_start_from else None
    if warm is not None and config.warm_start_freeze != "none":
        warm["frozen"] = freeze(model, config.warm_start_freeze, warm["loaded"])
    opt = make_optimizer(model, config)
    meta = {"data_dir": str(data_dir), "data_sha256": dataset_sha256(data_dir / "train.parquet"), "seed": config.seed}
    k = config.diagnostics.ndcg_k

    start_epoch, best, best_epoch, bad_epochs = 0, -1.0, -1, 0
    mit_state: dict[str, Any] = {}  # the variant's own running state (AGM means, PMR prototypes), resumed with the run
    state = load_resume_state(out) if resume else None
    if state is not None and state.get("config_sha256") == config.sha256():
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, best_epoch, bad_epochs = state["epoch"] + 1, state["best"], state["best_epoch"], state["bad_epochs"]
        mit_state = dict(state.get("mitigation_state", {}))
        if state.get("finished", False):  # the run already ended (early stop or max_epochs): only re-test
            start_epoch = config.optim.max_epochs
        logger.info("resuming %s at epoch %d (best val NDCG@%d %.4f)", config.variant, start_epoch, k, best)
    elif (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run starts a fresh log

    history: list[dict[str, Any]] = []
    train_time = diag_time = 0.0
    rows_seen = 0
    t_run = time.perf_counter()
    epochs = tqdm(range(start_epoch, config.optim.max_epochs), desc=config.variant, disable=not progress, leave=False)
    for epoch in epochs:
        # ---- train one epoch -------------------------------------------------------------
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        sums: dict[str, float] = {}
        n_steps = 0
        mitigations.epoch_start(model, config, train_split, epoch, mit_state)
        for rows, group, n_groups in _batches(train_split, config.optim.batch_queries, gen):
            rows_d, group = rows.to(device), group.to(device)
            q, t, label = train_split.query[rows_d], train_split.text_tokens[rows_d], train_split.label[rows_d]
            v = train_split.visual_tokens[rows_d] if with_visual else None
            loss, extra, after_backward = mitigations.step_loss(model, config, q, t, v, label, group, n_groups, epoch, mit_state, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms = modality_grad_norms(model)
            extra["grad_norm_text"] = norms["text"]
            if with_visual:
                extra["grad_norm_visual"] = norms["visual"]
                extra["grad_ratio_visual_text"] = norms["visual"] / max(norms["text"], 1e-12)
            extra.update(after_backward())  # OGM-GE, MMPareto: gradients rewritten after the norms are logged
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            opt.step()
            extra["loss"] = float(loss.detach())
            for key, value in extra.items():
                sums[key] = sums.get(key, 0.0) + value
            n_steps += 1
            rows_seen += len(rows)
        mitigations.epoch_end(model, config, train_split, epoch, mit_state)
        t1 = time.perf_counter()
        # ---- diagnostics on val ----------------------------------------------------------
        val_scores = score_split(model, val_split, config.diagnostics.mask, seed=epoch)
        diag = {**summarize(model, val_split, val_scores, k=k), **head_attention(model, val_scores)}
        t2 = time.perf_counter()
        train_time += t1 - t0
        diag_time += t2 - t1
        record = {"epoch": epoch, **{key: v / n_steps for key, v in sums.items()}, **{f"val_{key}": v for key, v in diag.items()},
                  "train_s": t1 - t0, "diagnostics_s": t2 - t1}
        history.append(record)
        with (out / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        epochs.set_postfix(ndcg=f"{diag['ndcg']:.4f}", vdrop=diag["visual_drop"])
        # ---- checkpoint / early stopping -------------------------------------------------
        if diag["ndcg"] > best + config.optim.min_delta:
            best, best_epoch, bad_epochs = diag["ndcg"], epoch, 0
            if config.optim.keep == "best-val":
                save_checkpoint(out, model, config, {**meta, "epoch": epoch, "val_ndcg": best})
        else:
            bad_epochs += 1
        stop_early = bad_epochs >= config.optim.patience and epoch + 1 >= config.optim.min_epochs
        finished = stop_early or epoch + 1 >= config.optim.max_epochs
        if config.optim.keep == "last" and finished:  # the converged model, whatever val says
            best, best_epoch = diag["ndcg"], epoch
            save_checkpoint(out, model, config, {**meta, "epoch": epoch, "val_ndcg": best})
        save_resume_state(out, {"config_sha256": config.sha256(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                                "bad_epochs": bad_epochs, "finished": finished, "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                                "mitigation_state": mit_state})
        if finished:
            break

    # ---- test with the best checkpoint -----------------------------------------------------
    best_model = load_checkpoint(out, device=device).model
    test_split = load_split(data_dir / "test.parquet", dims, with_visual).to(device)
    test = summarize(best_model, test_split, score_split(best_model, test_split, config.diagnostics.mask), k=k)
    result = TrainResult(
        out=out, variant=config.variant, epochs_run=(history[-1]["epoch"] + 1) if history else (state["epoch"] + 1 if state else 0),
        best_epoch=best_epoch, best_val_ndcg=best, test=test, train_seconds=time.perf_counter() - t_run,
        examples_per_s=rows_seen / max(train_time, 1e-9), diagnostics_share=diag_time / max(train_time + diag_time, 1e-9),
        history=history, warm_start=warm,
    )
    payload = {k2: v for k2, v in asdict(result).items() if k2 != "history"}
    payload["out"] = str(out)
    (out / RESULT_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return result


def train_late_fusion(config: TrainConfig, data_dir: str | Path, out: str | Path, progress: bool = True) -> tuple[Ranker, dict[str, Any]]:
    """Train the late-fusion variant with `config`'s recipe (its `variant` is replaced by
    `late-fusion`) through `fusionguard.training.trainer.train`.

    Returns the best model (CPU, eval mode) and its checkpoint meta (variant, config_sha256,
    data_sha256, data_dir, seed, epoch, val_ndcg), which is what `export_model` needs. OUT holds
    the usual checkpoint, train_log.jsonl and result.json.
    """
    train(replace(config, variant=LATE_FUSION), data_dir, out, progress=progress, resume=False)
    checkpoint = load_checkpoint(out)
    return checkpoint.model, checkpoint.meta  # type: ignore[return-value]
