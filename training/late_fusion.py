"""A lightweight late-fusion ranker for production latency, and its short training loop.

Each modality is scored on its own and the two scores are added; nothing attends across
modalities, so the model is a handful of matrix products (no softmax over keys):

    s_text   = w_t · (P_q query ⊙ mean_j P_t text_j)                 # (N,) per-channel agreement
    s_visual = w_v · max_j (U_q query ⊙ P_v visual_j)²               # (N,) sign-invariant patch match
    score    = s_text + s_visual + b

The squared, max-pooled visual term reads an object patch whatever its sign (the synthetic
benchmark's visual signal cancels under mean pooling). The model follows the training seam of
docs/interfaces.md (`forward`, `input_specs`, `modalities`, `attention_keys`, `n_heads`) and has
no attention output (`n_heads` None, `attention_keys` empty), so `export.pipeline.export_model`
exports it as it is.

Why a loop of its own: `training.models.build_model` and `training.config.VARIANTS` have no hook
for extra architectures, so `training.trainer.train` cannot build this model. The loop below reuses
the trainer's pieces (`training.data.load_split`, `training.losses.listwise_softmax_ce`,
`training.diagnostics.modality_grad_norms`, `fusionguard.metrics.ndcg_at_k`) and writes the same
JSONL log and result.json layout.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from fusionguard.contract import TensorSpec
from fusionguard.dataset import dataset_sha256
from fusionguard.errors import InvalidInputError
from fusionguard.metrics import ablation_drop, ndcg_at_k
from training import losses
from training.config import ModelConfig, TrainConfig
from training.data import Split, load_split, read_dims
from training.diagnostics import modality_grad_norms
from training.models import InputDims
from training.trainer import LOG_FILE, RESULT_FILE, resolve_device

logger = logging.getLogger(__name__)

VARIANT = "late-fusion"
STATE_FILE = "late_fusion.pt"


class LateFusionRanker(nn.Module):
    """score = text head + visual head; see the module docstring."""

    variant = VARIANT
    n_heads = None  # no attention output
    attention_keys: dict[str, tuple[int, int]] = {}

    def __init__(self, dims: InputDims, cfg: ModelConfig) -> None:
        super().__init__()
        self.dims = dims
        r = cfg.d_model
        self.q_text = nn.Linear(dims.d, r)
        self.p_text = nn.Linear(dims.d, r)
        self.q_visual = nn.Linear(dims.d, r)
        self.p_visual = nn.Linear(dims.d, r)
        self.w_text = nn.Linear(r, 1)
        self.w_visual = nn.Linear(r, 1)

    @property
    def modalities(self) -> dict[str, tuple[str, ...]]:
        return {"text": ("query", "text_tokens"), "visual": ("visual_tokens",)}

    def input_specs(self) -> tuple[TensorSpec, ...]:
        d = self.dims
        return (TensorSpec("query", "float32", (d.d,)), TensorSpec("text_tokens", "float32", (d.lt, d.d)),
                TensorSpec("visual_tokens", "float32", (d.lv, d.d)))

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"text": [*self.p_text.parameters()], "visual": [*self.p_visual.parameters()]}

    def unimodal(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor) -> tuple[Tensor, Tensor]:
        s_text = self.w_text(self.q_text(query) * self.p_text(text_tokens).mean(dim=1)).squeeze(-1)  # (N,)
        match = self.q_visual(query).unsqueeze(1) * self.p_visual(visual_tokens)  # (N, Lv, r)
        s_visual = self.w_visual(match.square().amax(dim=1)).squeeze(-1)  # (N,)
        return s_text, s_visual

    def forward(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor | None = None):
        if visual_tokens is None:
            raise InvalidInputError("the late-fusion model needs visual_tokens; pass a (N, Lv, D) tensor")
        s_text, s_visual = self.unimodal(query, text_tokens, visual_tokens)
        return s_text + s_visual, None


def _scores(model: LateFusionRanker, split: Split, mask: str | None = None) -> np.ndarray:
    with torch.no_grad():
        t, v = split.text_tokens, split.visual_tokens
        q = split.query
        if mask == "visual":
            v = torch.zeros_like(v)
        elif mask == "text":
            q, t = torch.zeros_like(q), torch.zeros_like(t)
        return model(q, t, v)[0].cpu().numpy()


def _summary(model: LateFusionRanker, split: Split, k: int) -> dict[str, float | None]:
    ndcg = ndcg_at_k(split.groups, np.stack([_scores(model, split), _scores(model, split, "visual"),
                                             _scores(model, split, "text")]), k=k)
    return {"ndcg": float(np.nanmean(ndcg[0])), "visual_drop": float(np.nanmean(ablation_drop(ndcg[0], ndcg[1]))),
            "text_drop": float(np.nanmean(ablation_drop(ndcg[0], ndcg[2]))), "visual_attention_mass": None,
            "attention_entropy": None}


def train_late_fusion(config: TrainConfig, data_dir: str | Path, out: str | Path, progress: bool = True) -> tuple[LateFusionRanker, dict[str, Any]]:
    """Train the late-fusion ranker with `config`'s optimiser, seed and early stopping.

    Returns the best model (eval mode) and the export meta (variant, hashes, data_dir). Writes
    OUT/train_log.jsonl (one line per epoch, with per-modality gradient norms), OUT/late_fusion.pt
    and OUT/result.json.
    """
    data_dir, out = Path(data_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    dims = read_dims(data_dir)
    train_split = load_split(data_dir / "train.parquet", dims, True).to(device)
    val_split = load_split(data_dir / "val.parquet", dims, True).to(device)
    model = LateFusionRanker(dims, config.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    k = config.diagnostics.ndcg_k
    (out / LOG_FILE).unlink(missing_ok=True)
    best, best_epoch, bad, best_state = -1.0, -1, 0, None
    t_run = time.perf_counter()
    offsets = torch.from_numpy(train_split.offsets)
    for epoch in tqdm(range(config.optim.max_epochs), desc=VARIANT, disable=not progress, leave=False):
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(train_split.n_queries, generator=gen)
        sums = {"loss": 0.0, "grad_norm_text": 0.0, "grad_norm_visual": 0.0}
        steps = 0
        for i in range(0, train_split.n_queries, config.optim.batch_queries):
            qs = order[i : i + config.optim.batch_queries]
            rows = torch.cat([torch.arange(int(offsets[g]), int(offsets[g + 1])) for g in qs]).to(device)
            group = torch.repeat_interleave(torch.arange(len(qs)), offsets[qs + 1] - offsets[qs]).to(device)
            score, _ = model(train_split.query[rows], train_split.text_tokens[rows], train_split.visual_tokens[rows])
            loss = losses.listwise_softmax_ce(score, train_split.label[rows], group, len(qs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms = modality_grad_norms(model)  # type: ignore[arg-type]
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            opt.step()
            sums["loss"] += float(loss.detach())
            sums["grad_norm_text"] += norms["text"]
            sums["grad_norm_visual"] += norms["visual"]
            steps += 1
        model.eval()
        diag = _summary(model, val_split, k)
        record = {"epoch": epoch, **{key: v / steps for key, v in sums.items()},
                  "grad_ratio_visual_text": sums["grad_norm_visual"] / max(sums["grad_norm_text"], 1e-12),
                  **{f"val_{key}": v for key, v in diag.items()}}
        with (out / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if diag["ndcg"] > best + config.optim.min_delta:
            best, best_epoch, bad = diag["ndcg"], epoch, 0
            best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= config.optim.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    torch.save(model.state_dict(), out / STATE_FILE)
    test_split = load_split(data_dir / "test.parquet", dims, True).to(device)
    meta = {"variant": VARIANT, "config_sha256": config.sha256(), "data_sha256": dataset_sha256(data_dir / "train.parquet"),
            "data_dir": str(data_dir), "seed": config.seed, "epoch": best_epoch, "val_ndcg": best}
    result = {"variant": VARIANT, "best_epoch": best_epoch, "best_val_ndcg": best, "test": _summary(model, test_split, k),
              "train_seconds": time.perf_counter() - t_run, "out": str(out)}
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return model.cpu(), meta
