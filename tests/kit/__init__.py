"""Shared test helpers, one place each:

- ``wheels``: the one wheel builder (valid METADATA/WHEEL/RECORD, PEP 825 variant label, sidecar);
- ``upstream``: the one upstream builder (download.pytorch.org-shaped PEP 503 trees, on disk or
  in a FaultServer) and the in-memory loopback upstream ``populate``;
- ``torchmirror``: the real-torch mirror made once per session (fixture ``torch_mirror``);
- ``lockmirror``: a hand-built mirror with a stand-in torch for the lock/verify tests;
- ``variantindex``: a loopback PEP 825/850 variant upstream from one ``variants.json`` document;
- ``serving``: the loopback server lifecycle, ``torchdepot serve``'s server on a thread, one request;
- ``cli``: ``python -m torchdepot ...`` as a user runs it (hermetic, from the repo root);
- ``lanproxy``, ``blackhole``, ``condapython``: a LAN host name for loopback servers, a host
  that drops packets, a placeholder python conda package.
"""
