"""Loading a benchmark directory (train/val/test Parquet) into torch tensors grouped by query."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusionguard.dataset import load_dataset, open_parquet
from fusionguard.errors import InvalidInputError
from fusionguard.metrics import QueryGroups
from fusionguard.training.models import InputDims
from fusionguard.training.synth import META_FILE, SPLITS

TEXT_INPUTS = ("query", "text_tokens")
VISUAL_INPUT = "visual_tokens"


@dataclass
class Split:
    """One split as tensors. Rows are sorted by query; query g owns rows offsets[g]:offsets[g+1]."""

    query: torch.Tensor  # (N, D)
    text_tokens: torch.Tensor  # (N, Lt, D)
    visual_tokens: torch.Tensor | None  # (N, Lv, D)
    label: torch.Tensor  # (N,) int64
    group: torch.Tensor  # (N,) int64 query index 0..G-1
    offsets: np.ndarray  # (G + 1,)
    groups: QueryGroups  # for fusionguard.metrics (rows in this split's order)

    @property
    def n_rows(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_queries(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def to(self, device: torch.device) -> Split:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Split(move(self.query), move(self.text_tokens), move(self.visual_tokens), move(self.label),
                     move(self.group), self.offsets, self.groups)


def data_problems(data_dir: str | Path, needs_visual: bool) -> list[str]:
    """Every problem that would stop training on `data_dir`, without reading the tensors."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [f"data directory {data_dir} does not exist; create it with `fusionguard data synth --out {data_dir}`"]
    problems = []
    for split in SPLITS:
        path = data_dir / f"{split}.parquet"
        if not path.is_file():
            problems.append(f"{path} is missing; a benchmark directory holds train/val/test.parquet")
            continue
        try:
            names = set(open_parquet(path).schema_arrow.names)
        except InvalidInputError as err:
            problems.append(str(err))
            continue
        wanted = ["query_id", "item_id", "label", *TEXT_INPUTS] + ([VISUAL_INPUT] if needs_visual else [])
        missing = [c for c in wanted if c not in names]
        if missing:
            hint = " (a fusion variant needs the visual modality; train --variant v1 for text-only data)" if VISUAL_INPUT in missing else ""
            problems.append(f"{path} lacks columns {missing}{hint}")
    return problems


def read_dims(data_dir: str | Path) -> InputDims:
    """Per-row shapes from synth.json, else inferred from the first row of train.parquet."""
    data_dir = Path(data_dir)
    meta = data_dir / META_FILE
    if meta.is_file():
        dims = json.loads(meta.read_text(encoding="utf-8"))["input_dims"]
        return InputDims(int(dims["d"]), int(dims["lt"]), int(dims["lv"]))
    table = open_parquet(data_dir / "train.parquet").read_row_group(0)
    first = {name: len(table.column(name)[0]) for name in table.column_names if name in (*TEXT_INPUTS, VISUAL_INPUT)}
    d = first["query"]
    return InputDims(d, first["text_tokens"] // d, first.get(VISUAL_INPUT, d) // d)


def load_split(path: str | Path, dims: InputDims, with_visual: bool) -> Split:
    """Read one split and group its rows by query (stable, so item order within a query is kept)."""
    inputs = [*TEXT_INPUTS] + ([VISUAL_INPUT] if with_visual else [])
    batch = load_dataset(path, inputs=inputs)
    n = batch.label.shape[0]
    shapes = {"query": (dims.d,), "text_tokens": (dims.lt, dims.d), VISUAL_INPUT: (dims.lv, dims.d)}
    feeds = {}
    for name in inputs:
        flat = np.asarray(batch.feeds[name], dtype=np.float32)
        want = int(np.prod(shapes[name]))
        if flat.size != n * want:
            raise InvalidInputError(f"{path}: column {name} holds {flat.size // max(n, 1)} values per row, expected {want} for shape {shapes[name]}")
        feeds[name] = flat.reshape(n, *shapes[name])
    _, qidx = np.unique(batch.query_id, return_inverse=True)
    order = np.argsort(qidx, kind="stable")
    qidx = qidx.reshape(-1)[order]
    offsets = np.concatenate(([0], np.cumsum(np.bincount(qidx)))).astype(np.int64)
    qid, iid, label = batch.query_id[order], batch.item_id[order], batch.label[order]
    return Split(
        query=torch.from_numpy(feeds["query"][order]),
        text_tokens=torch.from_numpy(feeds["text_tokens"][order]),
        visual_tokens=torch.from_numpy(feeds[VISUAL_INPUT][order]) if with_visual else None,
        label=torch.from_numpy(label.astype(np.int64)),
        group=torch.from_numpy(qidx.astype(np.int64)),
        offsets=offsets,
        groups=QueryGroups.from_arrays(qid, iid, label),
    )
