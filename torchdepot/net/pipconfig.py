"""The user's pip configuration: where dependencies come from.

Read with the interpreter's own pip (``python -m pip config list``) so every config file
pip would read (global, user, site, ``PIP_CONFIG_FILE``) counts, plus the environment
variables ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` / ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX``.
No index host is hard-coded: when no index-url is configured, pip's own default applies
(:func:`pip_default_index` asks pip for it at run time).

A pip ``constraint`` setting is deliberately not applied to mirroring: it caps what this
machine installs, not what a mirror for other machines must hold.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

# pip option sections that apply to ``pip install``/``pip download``, lowest priority first.
_SECTIONS = ("global", "download", "install")
_LIST_KEYS = ("extra-index-url", "find-links")


@dataclass(frozen=True)
class PipSources:
    index_url: str | None = None  # None: pip's default index (unless no_index)
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()  # URLs (local paths turned into file:// URLs)
    no_index: bool = False
    note: str = ""  # how they were found (for messages)

    @property
    def indexes(self) -> tuple[str, ...]:
        """Configured index URLs (extra ones first: they take priority in uv)."""
        return self.extra_index_urls + ((self.index_url,) if self.index_url else ())

    def describe(self) -> str:
        parts = []
        if self.no_index:
            parts.append("no-index")
        parts.append(f"index-url={self.index_url or '(pip default)'}")
        if self.extra_index_urls:
            parts.append("extra-index-url=" + " ".join(self.extra_index_urls))
        if self.find_links:
            parts.append("find-links=" + " ".join(self.find_links))
        return ", ".join(parts)


def _to_url(item: str, cwd: Path) -> str:
    if "://" in item:
        return item.rstrip("/") if not item.startswith("file:") else item
    return (cwd / os.path.expanduser(item)).resolve().as_uri()


def _split(value: str) -> list[str]:
    return value.split()  # pip splits list options on any whitespace


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_config_list(text: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> PipSources:
    """Parse ``pip config list`` output (``section.key='value'`` lines) plus PIP_* env vars.

    pip's precedence: environment > command section (install/download) > global.
    """
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    found: dict[str, tuple[int, str]] = {}  # key -> (priority, value)
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.strip().rpartition(".")
        section = section.strip()
        value = value.strip()
        try:
            # pip prints each value as a Python literal ('a\nb' for multi-line values)
            literal = ast.literal_eval(value)
            value = literal if isinstance(literal, str) else value
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = value.strip("'\"")
        if section in _SECTIONS:
            prio = _SECTIONS.index(section)
        elif section == ":env:":
            prio = 10  # pip lists PIP_* variables it saw as ":env:.<key>"
        else:
            continue
        if key not in found or found[key][0] <= prio:
            found[key] = (prio, value)
    for key, var in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("find-links", "PIP_FIND_LINKS"), ("no-index", "PIP_NO_INDEX")):
        if env.get(var) is not None:
            found[key] = (20, env[var])

    def get(key: str) -> str | None:
        return found[key][1] if key in found else None

    index = get("index-url")
    extra = _split(get("extra-index-url") or "")
    links = _split(get("find-links") or "")
    return PipSources(
        index_url=index.rstrip("/") if index else None,
        extra_index_urls=tuple(dict.fromkeys(u.rstrip("/") for u in extra)),
        find_links=tuple(dict.fromkeys(_to_url(u, cwd) for u in links)),
        no_index=_truthy(get("no-index") or ""),
        note="pip config list",
    )


def _config_list_in_process() -> str | None:
    """What ``pip config list`` prints, from this interpreter's pip without a subprocess
    (pip's CLI start-up costs ~0.5 s; a no-op re-sync should take less than a second)."""
    try:
        from pip._internal.configuration import Configuration

        conf = Configuration(isolated=False)
        conf.load()
        return "".join(f"{k}={v!r}\n" for k, v in conf.items())
    except Exception:  # pip internals moved or config unreadable: ask the CLI instead
        return None


def read_pip_config(python: str | None = None, env: dict[str, str] | None = None) -> PipSources:
    """Ask the interpreter's pip for its configuration (falls back to env vars alone)."""
    if python is None and env is None:
        text = _config_list_in_process()
        if text is not None:
            return replace(parse_config_list(text, os.environ), note="pip configuration")
    env = dict(os.environ if env is None else env)
    cmd = [python or sys.executable, "-m", "pip", "config", "list"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        text = proc.stdout if proc.returncode == 0 else ""
        note = "pip config list" if proc.returncode == 0 else "environment only (pip config list failed)"
    except (OSError, subprocess.TimeoutExpired):
        text, note = "", "environment only (pip not runnable)"
    return replace(parse_config_list(text, env), note=note)


def _ask_pip(attr: str, python: str | None, env: dict[str, str] | None) -> str | None:
    """``PyPI.<attr>`` from the interpreter's own pip (its defaults are never hard-coded here)."""
    code = f"from pip._internal.models.index import PyPI; print(PyPI.{attr})"
    try:
        proc = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ if env is None else env), timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def pip_default_index(python: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """pip's built-in default index URL, asked from pip itself (never hard-coded here)."""
    url = _ask_pip("simple_url", python, env) or ""
    return url.rstrip("/") if "://" in url else None


def pip_file_host(python: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The file host behind pip's built-in default index, asked from pip (never hard-coded):
    its pages link there, so the host policy must allow it when that index is used."""
    host = (_ask_pip("file_storage_domain", python, env) or "").lower()
    return host if host and "/" not in host else None
