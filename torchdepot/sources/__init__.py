"""Every reader of upstream: PEP 503/691 pages, find-links pages and flat listings
(``upstream``: the one cached, counted, policy-confined reader a sync uses, and the three
layouts), wheel METADATA by Range reads (``wheelmeta``), conda repodata. Parsing is pure
(bytes in, records out); fetching goes through :class:`torchdepot.net.http.Client`."""
