"""Shared test configuration. Files are written only under tmp_path."""

import os

# Keep ONNX Runtime and BLAS from oversubscribing the CI machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
