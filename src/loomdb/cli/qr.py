"""QR codes in a terminal, for ``loomdb client p2p ticket``.

The symbol is segno's (a pure-Python QR encoder): the smallest version that holds
the text at error correction L, raised to a better level where it still fits the
same version. Each character cell shows two modules, one above the other, with
Unicode half blocks (``▀ ▄ █`` and space), so the code is as wide as it is tall
on most terminal fonts.

Terminals mostly draw light text on a dark background, so the *light* modules
are the ones drawn (a block is light), the dark ones left as background, and the
quiet zone around the symbol — :data:`QUIET` modules, the standard's four — is
drawn light too. ``invert`` draws the dark modules instead (for a light
background). Phone scanners read either.
"""

from __future__ import annotations

from typing import Final

import segno
from segno.encoder import DataOverflowError

QUIET: Final = 4
# (top module drawn, bottom module drawn) → the character
_HALF_BLOCKS: Final = {
    (False, False): " ",
    (True, False): "▀",
    (False, True): "▄",
    (True, True): "█",
}


def qr_code(text: str) -> segno.QRCode | None:
    """The QR code of ``text`` (byte mode, version 1-40); ``None`` if it does not fit."""
    try:
        return segno.make(text, error="l", micro=False)
    except DataOverflowError:
        return None


def qr_modules(code: segno.QRCode, quiet: int = QUIET) -> list[list[bool]]:
    """Each row of the symbol and its quiet zone: ``True`` for a dark module."""
    return [[bool(m) for m in row] for row in code.matrix_iter(scale=1, border=quiet)]


def render(code: segno.QRCode, *, invert: bool = False, quiet: int = QUIET) -> str:
    """The symbol as lines of half blocks (see the module doc): ``ceil(rows / 2)`` lines."""
    rows = qr_modules(code, quiet)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))  # below the quiet zone: light, like it
    lines = []
    for top, bottom in zip(rows[::2], rows[1::2], strict=True):
        lines.append(
            "".join(
                _HALF_BLOCKS[(t == invert, b == invert)] for t, b in zip(top, bottom, strict=True)
            )
        )
    return "\n".join(lines)


def read_back(drawing: str, *, invert: bool = False) -> list[list[bool]]:
    """The modules a drawing of :func:`render` shows (``True``: dark), two rows per line:
    what a test compares with the encoder's matrix."""
    drawn = {char: key for key, char in _HALF_BLOCKS.items()}
    rows: list[list[bool]] = []
    for line in drawing.splitlines():
        cells = [drawn[c] for c in line]
        rows.append([t == invert for t, _ in cells])
        rows.append([b == invert for _, b in cells])
    return rows


__all__ = ["QUIET", "qr_code", "qr_modules", "read_back", "render"]
