"""libp2p Peer IDs and multiaddrs for Ed25519 node keys, computed without libp2p.

libp2p is only a dev dependency (the tests check our output against it), so the
few bytes of encoding a Peer ID needs are written out here, following the
libp2p peer-ids spec:

* the public key is the protobuf ``PublicKey {Type = Ed25519 (1), Data = 32 bytes}``,
  which for Ed25519 is always the 36 bytes ``08 01 12 20 || key``;
* keys of at most 42 serialised bytes are inlined with the *identity* multihash
  (code ``0x00``, length ``0x24``) instead of being hashed, so the key can be
  read back from the Peer ID;
* the multihash is written in base58btc, which gives the familiar ``12D3KooW…``.

Only this one form is accepted when parsing: every loomdb node key is Ed25519.
"""

from __future__ import annotations

import ipaddress

import base58

from loomdb.errors import InvalidKeyError, ValidationError
from loomdb.identity.keys import ED25519_PUBLIC_KEY_SIZE

# protobuf field 1 (KeyType, varint) = 1 (Ed25519); field 2 (Data, bytes) of length 32
_PROTOBUF_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, ED25519_PUBLIC_KEY_SIZE])
_PROTOBUF_KEY_SIZE = len(_PROTOBUF_ED25519_PREFIX) + ED25519_PUBLIC_KEY_SIZE  # 36
_IDENTITY_MULTIHASH_CODE = 0x00
# multihash = code varint || digest-length varint || digest; both varints fit one byte here
_PEER_ID_PREFIX = bytes([_IDENTITY_MULTIHASH_CODE, _PROTOBUF_KEY_SIZE]) + _PROTOBUF_ED25519_PREFIX
PEER_ID_SIZE = len(_PEER_ID_PREFIX) + ED25519_PUBLIC_KEY_SIZE  # 38 bytes
MAX_PORT = 65535


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidKeyError("an Ed25519 public key is 32 bytes")


def peer_id_bytes(public_key: bytes) -> bytes:
    """The binary Peer ID (identity multihash of the protobuf key) of an Ed25519 public key.

    Raises :class:`InvalidKeyError` if ``public_key`` is not 32 bytes.
    """
    _check_public_key(public_key)
    return _PEER_ID_PREFIX + public_key


def peer_id_from_public_key(public_key: bytes) -> str:
    """The base58btc Peer ID string (``12D3KooW…``) of an Ed25519 public key."""
    encoded: bytes = base58.b58encode(peer_id_bytes(public_key))
    return encoded.decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The 32-byte Ed25519 public key inlined in a ``12D3KooW…`` Peer ID.

    Raises :class:`ValidationError` for anything else: not a string, not
    base58btc, a SHA-256 (``Qm…``) Peer ID, another key type, or a
    non-canonical spelling of a valid one.
    """
    if not isinstance(peer_id, str):
        raise ValidationError(f"a peer id is a string, not {type(peer_id).__name__}")
    try:
        raw: bytes = base58.b58decode(peer_id)
    except ValueError as exc:
        raise ValidationError(f"peer id {peer_id!r} is not base58btc") from exc
    if len(raw) != PEER_ID_SIZE or not raw.startswith(_PEER_ID_PREFIX):
        raise ValidationError(
            f"peer id {peer_id!r} is not an Ed25519 identity-multihash peer id (12D3KooW…)"
        )
    public_key = raw[len(_PEER_ID_PREFIX) :]
    # base58 decoding forgives trailing whitespace; a Peer ID has one spelling only
    if peer_id_from_public_key(public_key) != peer_id:
        raise ValidationError(f"peer id {peer_id!r} is not in canonical form")
    return public_key


def multiaddr(host: str, port: int, peer_id: str) -> str:
    """A dialable TCP multiaddr, ``/ip4/<host>/tcp/<port>/p2p/<peer_id>`` (``/ip6/`` for IPv6).

    ``host`` must be an IP literal (names would need ``/dns/``, which loomdb
    does not use); ``port`` is 1-65535 since port 0 cannot be dialled; the
    Peer ID is checked with :func:`public_key_from_peer_id`. IPv6 addresses are
    written in their compressed form; zone ids (``%eth0``) are refused.
    """
    if not isinstance(host, str):
        raise ValidationError(f"host must be a string IP address, not {type(host).__name__}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValidationError(f"host {host!r} is not an IPv4 or IPv6 address") from exc
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValidationError(f"host {host!r}: IPv6 zone ids are not supported")
        protocol = "ip6"
    else:
        protocol = "ip4"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ValidationError(f"port {port!r} is not an integer in 1-{MAX_PORT}")
    public_key_from_peer_id(peer_id)
    return f"/{protocol}/{address.compressed}/tcp/{port}/p2p/{peer_id}"
