"""``torchdepot doctor``: which PyTorch build fits this machine.

detect.py (I/O: OS, Python, glibc, GPUs and driver), recommend.py (pure: the builds this
machine can run, judged by driver AND GPU architecture with model.gpu_tables's tables; the
recommended one; the mirror's best match; the install commands), mirror.py (I/O: what a
mirror offers, within a bounded time), check.py (I/O: an installed torch).
"""
