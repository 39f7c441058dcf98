"""The mirror on disk: safe paths and atomic writes, the manifest, the PEP 503 pages and the conda channel."""
