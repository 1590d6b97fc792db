"""The node's admin token, and how a local client finds it.

``loomdb start`` keeps a random token in ``<home>/api.token`` (mode 0600, made
on first start, kept across restarts) and requires it on every control-plane
route of its API (:mod:`loomdb.api.guard`). Only the node's user can read the
file, so only that user's programs can drive the node; a web page cannot.

A client given only a URL (``loomdb client --url …``) finds the token in a
*runtime registry*, as Jupyter finds its servers' tokens: while it serves, the
node writes ``node-<pid>.json`` (``{"url", "token", "home", "pid"}``, 0600) into
the runtime directory — ``$LOOMDB_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/loomdb``,
else ``~/.local/share/loomdb/runtime`` (0700) — and removes it when it stops.
The client takes the token of the entry whose URL is the one it talks to (a
live process), and nothing else: a token is sent only to the node it belongs
to. ``$LOOMDB_API_TOKEN`` overrides the lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from loomdb.errors import ValidationError
from loomdb.files import atomic_write

TOKEN_FILE: Final = "api.token"
TOKEN_ENV: Final = "LOOMDB_API_TOKEN"
RUNTIME_ENV: Final = "LOOMDB_RUNTIME_DIR"
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def admin_token(home: Path) -> str:
    """The home's admin token, made (0600) on first use."""
    path = home / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the admin token {path}: {exc}") from None
    if token:
        return token
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode())
    return token


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(RUNTIME_ENV):
        return Path(environ[RUNTIME_ENV])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "loomdb"
    return Path.home() / ".local" / "share" / "loomdb" / "runtime"


class Registration:
    """This process's entry in the runtime registry, removed by :meth:`remove`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def register(
    url: str, token: str, home: Path, environ: Mapping[str, str] = os.environ
) -> Registration | None:
    """Record that this process serves ``url`` with ``token``; None when the
    runtime directory cannot be written (clients then need $LOOMDB_API_TOKEN)."""
    directory = runtime_dir(environ)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"node-{os.getpid()}.json"
        record = {"url": url, "token": token, "home": str(home), "pid": os.getpid()}
        atomic_write(path, json.dumps(record).encode())
    except OSError:
        return None
    return Registration(path)


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``url``, loopback names folded together."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK:
        host = "loopback"
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, host, port


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_token(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin token of the node serving ``url``: ``$LOOMDB_API_TOKEN``, else
    the registry entry of a live node at that URL (the newest); else None."""
    if environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV].strip()
    want = _origin(url)
    if want is None:
        return None
    directory = runtime_dir(environ)
    stamped: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError):
        for path in directory.glob("node-*.json"):
            with contextlib.suppress(OSError):  # gone since the listing
                stamped.append((path.stat().st_mtime, path))
    for _, path in sorted(stamped, reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get("token"), str):
            continue
        if _origin(str(record.get("url", ""))) == want and _alive(record.get("pid")):
            return str(record["token"])
    return None
