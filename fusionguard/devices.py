"""The one list of devices a command or a config may name.

"auto" picks CUDA when it is available (onnxruntime-gpu seeing a GPU for the scorer, torch seeing
one for training), else the CPU; "cuda" requires it; "cpu" never uses it.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")

__all__ = ["DEVICES"]
