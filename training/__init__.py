"""Training: the synthetic benchmark, the rankers, the losses and mitigations, and the trainer.

Needs the `train` extra (torch). Nothing in fusionguard/, gate/ or monitor/ imports this package.

The public names load on first use (PEP 562 module `__getattr__`), so that reading the
package's command specs (`fusionguard.training.commands`, for `fusionguard --help`) imports no torch.
"""

from fusionguard.lazy import lazy_exports

_EXPORTS = {
    "Checkpoint": "fusionguard.training.checkpoint",
    "InputDims": "fusionguard.training.models",
    "SynthConfig": "fusionguard.training.synth",
    "TrainConfig": "fusionguard.training.config",
    "TrainResult": "fusionguard.training.trainer",
    "VARIANTS": "fusionguard.training.config",
    "build_model": "fusionguard.training.models",
    "generate": "fusionguard.training.synth",
    "load_checkpoint": "fusionguard.training.checkpoint",
    "load_config": "fusionguard.training.config",
    "save_checkpoint": "fusionguard.training.checkpoint",
    "train": "fusionguard.training.trainer",
    "write_benchmark": "fusionguard.training.synth",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
