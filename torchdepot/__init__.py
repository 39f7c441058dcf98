"""torchdepot: offline PyTorch mirrors, locks and verification for pip, uv and conda."""

__version__ = "0.1.0"
