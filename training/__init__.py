"""Training: the synthetic benchmark, the rankers, the losses and mitigations, and the trainer.

Needs the `train` extra (torch). Nothing in fusionguard/, gate/ or monitor/ imports this package.
"""

from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.config import VARIANTS, TrainConfig, load_config
from training.models import InputDims, build_model
from training.synth import SynthConfig, generate, write_benchmark
from training.trainer import TrainResult, train

__all__ = [
    "VARIANTS",
    "Checkpoint",
    "InputDims",
    "SynthConfig",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "generate",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
    "write_benchmark",
]
