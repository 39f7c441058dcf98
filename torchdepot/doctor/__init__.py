"""``torchdepot doctor``: which PyTorch build fits this machine.

detect.py (I/O: OS, Python, glibc, GPUs and driver), drivers.py (pure: driver -> CUDA
table), recommend.py (pure: compatible accelerators, the recommended one, the mirror's
best match), mirror.py (I/O: what a mirror offers), check.py (I/O: an installed torch).
"""
