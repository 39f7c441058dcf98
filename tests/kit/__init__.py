"""Shared test helpers (one place): the LAN proxy that gives loopback servers a lab host name."""
