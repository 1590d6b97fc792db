"""What the HTTP and WebSocket transports share: the sync endpoint's path and media
type, the URL a user gives (a node's base URL), and the frame size rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from loomdb.errors import FrameTooLargeError, ValidationError

SYNC_PATH: Final = "/api/v0/sync"
"""Where a node serves sync: ``POST`` one frame (HTTP) or one message per frame (WebSocket)."""

SYNC_MEDIA_TYPE: Final = "application/vnd.loomdb.sync"
"""The content type of a frame sent over HTTP, both ways."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class SyncEndpoint:
    """A node's sync endpoint, parsed from the base URL a user gives."""

    scheme: str  # "http", "https", "ws" or "wss"
    host: str  # without the brackets of an IPv6 address
    port: int
    path: str  # the base URL's path with SYNC_PATH appended

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def netloc(self) -> str:
        """``host:port`` as in a URL or a Host header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def sync_endpoint(url: str, *, websocket: bool) -> SyncEndpoint:
    """Parse a node's base URL (``http://host:port``, as ``loomdb client --url`` takes).

    With ``websocket``, ``http``/``https`` become ``ws``/``wss`` and ``ws``/``wss``
    are accepted too. A URL that already ends in :data:`SYNC_PATH` is taken as is.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"bad node URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    allowed = ("http", "https", "ws", "wss") if websocket else ("http", "https")
    if scheme not in allowed or not parts.hostname:
        examples = "ws://127.0.0.1:9181 or http://…" if websocket else "http://127.0.0.1:9181"
        raise ValidationError(f"bad node URL {url!r}: expected e.g. {examples}")
    if parts.query or parts.fragment:
        raise ValidationError(f"bad node URL {url!r}: a base URL has no query or fragment")
    if websocket:
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    path = parts.path.rstrip("/")
    if not path.endswith(SYNC_PATH):
        path += SYNC_PATH
    return SyncEndpoint(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], path)


def check_frame_size(frame: bytes, max_frame: int, what: str = "frame") -> None:
    """Refuse a frame over the limit before anything of it is sent (rule 1)."""
    if len(frame) > max_frame:
        raise FrameTooLargeError(
            f"the {what} is {len(frame)} bytes, over the limit of {max_frame} bytes"
        )
