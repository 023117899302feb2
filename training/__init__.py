"""Training: the synthetic benchmark, the rankers, the losses and mitigations, and the trainer.

Needs the `train` extra (torch). Nothing in fusionguard/, gate/ or monitor/ imports this package.

The public names load on first use (PEP 562 module `__getattr__`), so that reading the
package's command specs (`training.commands`, for `fusionguard --help`) imports no torch.
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "Checkpoint": "training.checkpoint",
    "InputDims": "training.models",
    "SynthConfig": "training.synth",
    "TrainConfig": "training.config",
    "TrainResult": "training.trainer",
    "VARIANTS": "training.config",
    "build_model": "training.models",
    "generate": "training.synth",
    "load_checkpoint": "training.checkpoint",
    "load_config": "training.config",
    "save_checkpoint": "training.checkpoint",
    "train": "training.trainer",
    "write_benchmark": "training.synth",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
