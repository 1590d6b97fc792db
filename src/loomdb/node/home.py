"""A node's home directory: its keyring and its store, in one place.

Layout::

    <home>/keyring.json   node key (Peer ID), user identities, named keys; 0600
    <home>/store.db       the SQLite entry store (+ -wal, -shm while open)

The home is created 0700 on first use. Its path comes from ``--home``, else
``$LOOMDB_HOME``, else ``~/.loomdb``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from loomdb.errors import ValidationError
from loomdb.identity.keyring import DEFAULT_KDF_PARAMS, KdfParams, Keyring, secret_from_env
from loomdb.identity.keys import NamedKey
from loomdb.identity.peer_id import multiaddr
from loomdb.identity.user import UserIdentity
from loomdb.stores.sqlite import SQLiteStore

DEFAULT_PORT = 9171
DEFAULT_KEY_NAME = "default"
LEGACY_DEFAULT_KEY_ID = "default@1"
"""The default key of every home made before key ids carried fingerprints: the same id
with different material on every node. Such a home keeps it, to read what it wrote."""


def default_home(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("LOOMDB_HOME") or Path.home() / ".loomdb")


class NodeHome:
    """Opens (creating on first use) a node's keyring and store."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
        self.path = path
        self.keyring = keyring

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        secret: str | None = None,
        environ: Mapping[str, str] = os.environ,
        kdf: KdfParams = DEFAULT_KDF_PARAMS,
        relay: bool = False,
    ) -> NodeHome:
        """Open the home at ``path``. The keyring passphrase is ``secret``, else
        ``$LOOMDB_KEYRING_SECRET``. A new home gets a node key, a default user
        identity and a default named key — except a relay's, which gets no named
        key: a relay holds no key to read entries.

        The default key's id is ``default-<fingerprint of its material>@1``
        (:func:`~loomdb.identity.keys.fingerprinted_key_id`), so no two nodes'
        default keys share an id. A home made before that holds ``default@1``: it
        keeps it for reading and gets a fingerprinted default for new writes."""
        home = Path(path)
        if home.exists() and not home.is_dir():
            raise ValidationError(f"{home} exists and is not a directory")
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ValidationError(f"cannot create node home {home}: {exc.strerror}") from exc
        keyring = Keyring.open(
            home / "keyring.json",
            secret if secret is not None else secret_from_env(environ),
            kdf=kdf,
        )
        changed = False
        if relay and keyring.named_keys:
            raise ValidationError(
                f"{home} holds decryption keys: a relay must not; use a new --home"
            )
        if keyring.default_user is None:
            # A relay's user only signs in to other nodes and is listed in directories
            # with the relay role; no key is ever granted to it.
            keyring.add_user(UserIdentity.generate(), default=True)
            changed = True
        if not relay and keyring.default_key is None:
            key = NamedKey.generate_fingerprinted(DEFAULT_KEY_NAME)
            keyring.add_named_key(key)
            keyring.set_default_key(key.key_id)
            changed = True
        if changed:
            keyring.save()
        return cls(home, keyring)

    @property
    def store_path(self) -> Path:
        return self.path / "store.db"

    def open_store(self) -> SQLiteStore:
        return SQLiteStore(self.store_path)

    @property
    def peer_id(self) -> str:
        return self.keyring.peer_id

    @property
    def user(self) -> UserIdentity:
        user = self.keyring.default_user
        assert user is not None  # open() makes one
        return user

    @property
    def default_key(self) -> NamedKey:
        """The key this node writes its open spaces with."""
        key = self.keyring.default_key
        assert key is not None  # open() makes one
        return key

    def listen_multiaddr(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> str:
        return multiaddr(host, port, self.peer_id)
