"""Crawlers: turn upstream listings (PEP 503/691 pages, find-links pages, conda repodata)
into the shared model. Parsing is pure (bytes in, records out); fetching goes through
:class:`torchdepot.net.http.Client`."""
