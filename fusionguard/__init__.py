"""fusionguard: keep multimodal ranking models honest from training to production."""

__version__ = "0.1.0"

__all__ = ["__version__"]
