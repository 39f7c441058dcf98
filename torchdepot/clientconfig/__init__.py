"""Point pip, uv and conda at a torchdepot mirror by merging into their config files.

Each writer is pure (``old text -> new text``); :mod:`.common` does the I/O: backup,
unified diff for ``--dry-run``, and an atomic replace so a crash never truncates the
user's file.
"""
