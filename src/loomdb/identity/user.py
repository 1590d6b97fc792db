"""User identities: an Ed25519 signing key plus an X25519 key-agreement key.

A user signs entries with Ed25519 and receives keys through X25519. The two
keys are generated independently rather than converting one Ed25519 key to
X25519: using one secret in two algorithms is allowed but needs a cross-protocol
argument, and two keys cost nothing.

A user's stable id is the did:key method-specific id of the signing key —
multibase base58btc (``z``) of the multicodec ``ed25519-pub`` prefix
(``0xed 0x01``) and the 32-byte key — so it starts with ``z6Mk`` and
``did:key:<user_id>`` is a valid DID anyone can resolve to the key offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import base58
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from loomdb.errors import InvalidKeyError, ValidationError
from loomdb.identity.keys import (
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SEED_SIZE,
    RandomSource,
    SigningKey,
)

X25519_KEY_SIZE = 32
_ED25519_PUB_MULTICODEC = bytes([0xED, 0x01])  # varint of 0xed, the ed25519-pub code
_BASE58BTC_MULTIBASE = "z"
_HEX_32 = re.compile(r"^[0-9a-f]{64}$")


def user_id_from_public_key(public_key: bytes) -> str:
    """The ``z6Mk…`` user id of a 32-byte Ed25519 public key (:class:`InvalidKeyError` if not)."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidKeyError("an Ed25519 public key is 32 bytes")
    encoded: bytes = base58.b58encode(_ED25519_PUB_MULTICODEC + public_key)
    return _BASE58BTC_MULTIBASE + encoded.decode("ascii")


def public_key_from_user_id(user_id: str) -> bytes:
    """The Ed25519 public key named by a ``z6Mk…`` user id (:class:`ValidationError` if not)."""
    if not isinstance(user_id, str):
        raise ValidationError(f"a user id is a string, not {type(user_id).__name__}")
    if user_id.startswith("did:key:"):
        raise ValidationError(f"user id {user_id!r}: drop the 'did:key:' prefix")
    if not user_id.startswith(_BASE58BTC_MULTIBASE):
        raise ValidationError(f"user id {user_id!r} is not multibase base58btc (z…)")
    try:
        raw: bytes = base58.b58decode(user_id[1:])
    except ValueError as exc:
        raise ValidationError(f"user id {user_id!r} is not base58btc") from exc
    prefix_size = len(_ED25519_PUB_MULTICODEC)
    if (
        len(raw) != prefix_size + ED25519_PUBLIC_KEY_SIZE
        or raw[:prefix_size] != _ED25519_PUB_MULTICODEC
    ):
        raise ValidationError(f"user id {user_id!r} does not name an Ed25519 public key")
    public_key = raw[prefix_size:]
    if user_id_from_public_key(public_key) != user_id:  # e.g. trailing whitespace
        raise ValidationError(f"user id {user_id!r} is not in canonical form")
    return public_key


@dataclass(frozen=True, slots=True)
class PublicUser:
    """What others may know of a user: its id and public keys. Checked on construction."""

    user_id: str
    signing_public_key: bytes
    x25519_public_key: bytes

    def __post_init__(self) -> None:
        if public_key_from_user_id(self.user_id) != self.signing_public_key:
            raise ValidationError(f"user id {self.user_id!r} does not match its signing key")
        if (
            not isinstance(self.x25519_public_key, bytes)
            or len(self.x25519_public_key) != X25519_KEY_SIZE
        ):
            raise InvalidKeyError("an X25519 public key is 32 bytes")


def _hex_field(data: Mapping[str, object], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, str) or not _HEX_32.match(value):
        raise ValidationError(f"user identity field {name!r} must be 64 lowercase hex digits")
    return bytes.fromhex(value)


class UserIdentity:
    """A user's private keys. ``repr`` shows only the user id."""

    __slots__ = ("_signing_key", "_user_id", "_x25519", "_x25519_private", "_x25519_public")

    def __init__(self, signing_key: SigningKey, x25519_private: bytes) -> None:
        if not isinstance(signing_key, SigningKey):
            raise InvalidKeyError("signing_key must be a SigningKey")
        if not isinstance(x25519_private, bytes) or len(x25519_private) != X25519_KEY_SIZE:
            raise InvalidKeyError("an X25519 private key is 32 bytes")
        self._signing_key = signing_key
        self._user_id = user_id_from_public_key(signing_key.public_key)
        self._x25519 = X25519PrivateKey.from_private_bytes(x25519_private)
        self._x25519_private = x25519_private
        self._x25519_public = self._x25519.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random: RandomSource = os.urandom) -> UserIdentity:
        """A new identity; ``random`` supplies both keys' bytes (any 32 bytes are a valid key)."""
        return cls(SigningKey(random(ED25519_SEED_SIZE)), random(X25519_KEY_SIZE))

    @property
    def signing_key(self) -> SigningKey:
        return self._signing_key

    @property
    def user_id(self) -> str:
        """The ``z6Mk…`` id, stable for the life of the signing key."""
        return self._user_id

    @property
    def x25519_public_key(self) -> bytes:
        """The raw 32-byte X25519 public key others use to send this user keys."""
        return self._x25519_public

    @property
    def x25519_private_bytes(self) -> bytes:
        """The raw 32-byte X25519 private key (what a keyring stores)."""
        return self._x25519_private

    @property
    def x25519_private_key(self) -> X25519PrivateKey:
        """The ``cryptography`` key object, for ``.exchange(peer_public_key)``."""
        return self._x25519

    def public(self) -> PublicUser:
        return PublicUser(self._user_id, self._signing_key.public_key, self._x25519_public)

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready form holding the secrets in hex; for the keyring only."""
        return {
            "user_id": self._user_id,
            "signing_seed": self._signing_key.seed.hex(),
            "x25519_private": self._x25519_private.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> UserIdentity:
        """Inverse of :meth:`to_dict`; :class:`ValidationError` if a field is missing or
        malformed, or the stored user id is not the signing key's (an edited file)."""
        if not isinstance(data, Mapping):
            raise ValidationError("a user identity is a mapping")
        unknown = set(data) - {"user_id", "signing_seed", "x25519_private"}
        if unknown:
            raise ValidationError(f"unknown user identity fields: {sorted(unknown)}")
        identity = cls(
            SigningKey(_hex_field(data, "signing_seed")), _hex_field(data, "x25519_private")
        )
        if data.get("user_id") != identity.user_id:
            raise ValidationError("stored user id does not match the stored signing key")
        return identity

    def __repr__(self) -> str:
        return f"UserIdentity(user_id={self._user_id!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UserIdentity)
            and other._signing_key == self._signing_key
            and other._x25519_private == self._x25519_private
        )

    def __hash__(self) -> int:
        return hash(self._user_id)
