"""Choosing what to mirror: torch pins from crawled links, uv closures, conda solves. No downloads."""
