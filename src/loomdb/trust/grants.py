"""Key grants: a named key wrapped to one reader's X25519 key with HPKE (RFC 9180).

Base mode, single shot, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
AES-256-GCM, from ``cryptography`` (its ``hpke`` module). The blob is the
encapsulated key (32 bytes) followed by the sealed 32-byte secret and its tag
(80 bytes in all). The HPKE ``info`` binds the grant to its space, key id and
recipient, so a blob cannot be moved to another key, space or user: opening it
there fails.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from loomdb.errors import DecryptionError, InvalidKeyError
from loomdb.identity.keys import NamedKey
from loomdb.identity.user import UserIdentity

SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
INFO_PREFIX: Final = b"loomdb-key-grant-v1\n"


def grant_info(space: str, key_id: str, user_id: str) -> bytes:
    return INFO_PREFIX + f"{space}\n{key_id}\n{user_id}".encode()


def wrap_key(key: NamedKey, space: str, user_id: str, x25519_public: bytes) -> bytes:
    """Seal ``key``'s secret to a reader (its user id and X25519 public key)."""
    try:
        recipient = X25519PublicKey.from_public_bytes(x25519_public)
    except ValueError as exc:
        raise InvalidKeyError(f"user {user_id}: bad X25519 public key") from exc
    return SUITE.encrypt(key.secret, recipient, info=grant_info(space, key.key_id, user_id))


def unwrap_key(blob: bytes, space: str, key_id: str, identity: UserIdentity) -> NamedKey:
    """Open a grant made to ``identity``; :class:`DecryptionError` when it was not
    made to it, for this key and space, or was altered."""
    try:
        secret = SUITE.decrypt(
            blob, identity.x25519_private_key, info=grant_info(space, key_id, identity.user_id)
        )
    except Exception as exc:  # InvalidTag, ValueError for a short blob
        raise DecryptionError(
            f"the grant of key {key_id!r} does not open with user {identity.user_id}'s key"
        ) from exc
    return NamedKey(key_id, secret)
