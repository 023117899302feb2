"""Checkpoints: a state dict plus JSON, loadable with `torch.load(..., weights_only=True)`.

Layout of a checkpoint directory:

    DIR/model.pt      the model's state dict (tensors only)
    DIR/config.json   the validated TrainConfig (TrainConfig.from_dict reads it back)
    DIR/meta.json     variant, config_sha256, data_sha256, data_dir, fusionguard_version,
                      input_dims {d, lt, lv} (to rebuild the model), plus whatever the trainer adds
    DIR/resume.pt     trainer state for resuming (optimizer, epoch, RNG states, best score);
                      written by `save_resume_state`, optional for export

Writes go to a temporary name first and are renamed into place, so an interrupted save never
leaves a half-written model.pt behind.
"""

from __future__ import annotations

import json
import pickle
import zipfile
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusionguard import __version__, jsonio
from fusionguard.errors import InvalidInputError
from fusionguard.training.config import TrainConfig
from fusionguard.training.models import InputDims, Ranker, build_model

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
RESUME_FILE = "resume.pt"


@dataclass
class Checkpoint:
    model: Ranker  # in eval mode
    config: TrainConfig
    meta: dict[str, Any]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, model: Ranker, config: TrainConfig, meta: Mapping[str, Any]) -> Path:
    """Write model.pt, config.json and meta.json into `directory` (created if needed).

    `meta` should carry data_sha256 and data_dir; variant, config_sha256, fusionguard_version and
    input_dims are filled in here. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full_meta = {
        "variant": model.variant,
        "config_sha256": config.sha256(),
        "fusionguard_version": __version__,
        "input_dims": {"d": model.dims.d, "lt": model.dims.lt, "lv": model.dims.lv},
        **dict(meta),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_torch_save(state, directory / MODEL_FILE)
    _atomic_write_text(directory / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True))
    _atomic_write_text(directory / META_FILE, json.dumps(full_meta, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from `directory` (weights_only loading) and return it in eval mode.

    Raises:
        InvalidInputError: a file is missing or unreadable, or the weights do not fit the model.
    """
    directory = Path(directory)
    missing = [name for name in (MODEL_FILE, CONFIG_FILE, META_FILE) if not (directory / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"{directory} is not a training checkpoint: missing {missing}; point at the --out directory of `fusionguard train`"
        )
    documents = {}
    for name in (CONFIG_FILE, META_FILE):
        try:
            text = (directory / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"checkpoint file {directory / name} is unreadable ({err}); retrain or restore it") from None
        documents[name] = jsonio.loads(text, f"checkpoint file {directory / name}")
        if not isinstance(documents[name], dict):
            raise InvalidInputError(f"checkpoint file {directory / name} must hold a JSON object; retrain or restore it")
    config_data, meta = documents[CONFIG_FILE], documents[META_FILE]
    config = TrainConfig.from_dict(config_data, source=str(directory / CONFIG_FILE))
    dims = _input_dims(meta.get("input_dims"), directory / META_FILE)  # checked before anything is allocated
    model = build_model(meta.get("variant", config.variant), dims, config.model)
    state = _load_weights(directory / MODEL_FILE)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise InvalidInputError(f"cannot load {directory / MODEL_FILE} into a {model.variant} model: {err}") from None
    model.to(device).eval()
    return Checkpoint(model=model, config=config, meta=meta)


def save_resume_state(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write the trainer's resume state (optimizer state dict, epoch, RNG states, best score,
    early-stopping counter) to DIR/resume.pt."""
    path = Path(directory) / RESUME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(dict(state), path)
    return path


def load_resume_state(directory: str | Path) -> dict[str, Any] | None:
    """The resume state in `directory`, or None when there is none (a fresh run)."""
    path = Path(directory) / RESUME_FILE
    if not path.is_file():
        return None
    # RNG states are uint8 tensors and Python ints/lists: all allowed by weights_only loading.
    return _load_weights(path)


# Largest sizes a checkpoint's meta.json may claim: a (d x d) layer at the bound is 1 GiB of float32,
# so a tampered meta.json cannot make `build_model` allocate gigabytes before anything is checked.
MAX_DIM = 16_384
MAX_TOKENS = 4_096


def _input_dims(value: Any, source: Path) -> InputDims:
    """input_dims {d, lt, lv} from meta.json: positive integers within bounds."""
    bounds = {"d": MAX_DIM, "lt": MAX_TOKENS, "lv": MAX_TOKENS}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{source} lacks input_dims {{d, lt, lv}}; it was not written by save_checkpoint")
    problems = [
        f"input_dims.{k} must be an integer in [1, {limit:,}], got {value.get(k)!r}"
        for k, limit in bounds.items()
        if not isinstance(value.get(k), int) or isinstance(value.get(k), bool) or not 1 <= value[k] <= limit
    ]
    if problems:
        raise InvalidInputError(f"{source}: {'; '.join(problems)}; retrain or restore the checkpoint")
    return InputDims(value["d"], value["lt"], value["lv"])


def _load_weights(path: Path) -> Any:
    """torch.load with weights_only=True; anything it refuses (a pickle that would run code, a
    damaged archive) is an InvalidInputError whose message gives no unsafe workaround."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidInputError(
            f"refusing to load {path}: it is not a plain tensor checkpoint (it holds Python objects that loading "
            "would have to construct or run). Only checkpoints written by `fusionguard train` are loaded; retrain "
            "or restore the file from a trusted source"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise InvalidInputError(f"cannot read {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); retrain or restore it") from None


def warm_start(model: Ranker, directory: str | Path, init: str = "fresh") -> dict[str, Any]:
    """Initialise `model` from the checkpoint in `directory` wherever a parameter's name and shape
    match (a V2 warm-started from the production V1 gets V1's whole text pathway and score head;
    its visual key/value projections keep their fresh initialisation).

    With `init="zero-values"` the new modality's value projections that were not loaded (names
    starting with "v_") are zeroed, so at the first step the new tokens contribute nothing to
    the attention output (they still take attention mass; training decides what they become).

    Returns {"from", "source_variant", "init", "loaded": [names], "kept": [names not loaded],
    "zeroed": [names zeroed]}.

    Raises:
        InvalidInputError: `directory` is not a checkpoint, or nothing in it fits the model.
    """
    source = load_checkpoint(directory)
    theirs = source.model.state_dict()
    ours = model.state_dict()
    loaded = sorted(k for k, v in ours.items() if k in theirs and theirs[k].shape == v.shape)
    if not loaded:
        raise InvalidInputError(f"no parameter of the {source.model.variant} checkpoint in {directory} fits a {model.variant} model")
    kept = sorted(set(ours) - set(loaded))
    zeroed = [k for k in kept if k.startswith("v_")] if init == "zero-values" else []
    with torch.no_grad():
        for name in loaded:
            ours[name].copy_(theirs[name].to(ours[name].device))
        for name in zeroed:
            ours[name].zero_()
    return {"from": str(directory), "source_variant": source.model.variant, "init": init,
            "loaded": loaded, "kept": kept, "zeroed": zeroed}
