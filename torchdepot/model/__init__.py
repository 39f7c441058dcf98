"""The model: pure types for accelerators, platforms, wheel names, conda builds and CUDA facts.

Nothing here does I/O or imports another layer of torchdepot; everything else builds on it."""
