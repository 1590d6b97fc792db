"""Space ids, and the names trust gives to things inside a space.

A **managed** space's id names its root of trust: ``<name>~<root user id>``,
e.g. ``team~z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK``. Any node, a
blind relay included, learns from the id alone which key must sign the space's
genesis directory entry; nothing else has to be configured or trusted on first
use. An id without ``~`` is an **open** space (``main``, the default of a
single node): no directory, no membership checks.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from loomdb.errors import ValidationError
from loomdb.identity.user import public_key_from_user_id

SEPARATOR: Final = "~"
DIRECTORY_COLLECTION: Final = "$directory"
DIRECTORY_DOCUMENT: Final = "log"
ALL: Final = "*"
"""The collection scope meaning every collection of the space."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


@dataclass(frozen=True, slots=True)
class ManagedSpace:
    space: str
    name: str
    root: str
    """The root admin's user id (``z6Mk…``)."""
    root_key: bytes


def check_space_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"space name {name!r}: 1-63 characters a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def make_space_id(name: str, root_user_id: str) -> str:
    public_key_from_user_id(root_user_id)  # a clear error for a bad id
    return f"{check_space_name(name)}{SEPARATOR}{root_user_id}"


def parse_space_id(space: str) -> ManagedSpace | None:
    """The managed space ``space`` names, or None for an open space.
    :class:`ValidationError` when it has a ``~`` but is not a well-formed id."""
    name, sep, root = space.partition(SEPARATOR)
    if not sep:
        return None
    check_space_name(name)
    try:
        root_key = public_key_from_user_id(root)
    except ValidationError as exc:
        raise ValidationError(f"space id {space!r}: {exc.message}") from None
    return ManagedSpace(space, name, root, root_key)


def is_managed(space: str) -> bool:
    return SEPARATOR in space


def space_tag(space: str) -> str:
    """A short, file- and key-id-safe tag of a space id (16 base32 characters)."""
    digest = hashlib.sha256(space.encode("utf-8")).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def key_name(collection: str) -> str:
    """The name of the key of a scope: ``space`` for every collection, else
    ``c-`` and a tag of the collection name (names may hold any character)."""
    if collection == ALL:
        return "space"
    return "c-" + hashlib.sha256(collection.encode("utf-8")).hexdigest()[:12]


def make_key_id(space: str, name: str, version: int) -> str:
    """``<name>.<space tag>@<version>``: unique across the spaces a keyring holds."""
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        raise ValidationError(f"key name {name!r}: 1-32 characters a-z 0-9 -")
    if type(version) is not int or version < 1:
        raise ValidationError("a key version is an integer >= 1")
    return f"{name}.{space_tag(space)}@{version}"
