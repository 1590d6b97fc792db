"""Peer IDs we compute must be exactly the ones py-libp2p derives from the same key."""

from __future__ import annotations

import hashlib
import random

import base58
import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID
from multiaddr import Multiaddr  # type: ignore[import-untyped]

from loomdb.errors import InvalidKeyError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import (
    PEER_ID_SIZE,
    multiaddr,
    peer_id_bytes,
    peer_id_from_public_key,
    public_key_from_peer_id,
)

SEEDS = [random.Random(i).randbytes(32) for i in range(20)] + [b"\x00" * 32, b"\xff" * 32]


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.hex()[:8])
def test_peer_id_matches_libp2p_for_same_seed(seed: bytes) -> None:
    ours = SigningKey(seed)
    theirs = create_new_key_pair(seed)
    assert theirs.public_key.to_bytes() == ours.public_key  # same key, so IDs are comparable
    expected = ID.from_pubkey(theirs.public_key)

    assert peer_id_from_public_key(ours.public_key) == expected.to_base58()
    assert peer_id_bytes(ours.public_key) == expected.to_bytes()


@pytest.mark.parametrize("seed", SEEDS[:5], ids=lambda s: s.hex()[:8])
def test_peer_id_matches_libp2p_from_public_bytes_and_parses_back(seed: bytes) -> None:
    public_key = SigningKey(seed).public_key
    peer_id = peer_id_from_public_key(public_key)

    assert peer_id == ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58()
    assert peer_id.startswith("12D3KooW")
    assert len(peer_id_bytes(public_key)) == PEER_ID_SIZE
    # libp2p reads the key back out of our string, and so do we
    extracted = ID.from_base58(peer_id).extract_public_key()
    assert extracted is not None
    assert extracted.to_bytes() == public_key
    assert public_key_from_peer_id(peer_id) == public_key


def test_different_keys_give_different_peer_ids() -> None:
    ids = {peer_id_from_public_key(SigningKey(seed).public_key) for seed in SEEDS}
    assert len(ids) == len(SEEDS)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_public_key_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(InvalidKeyError):
        peer_id_from_public_key(b"\x01" * size)
    with pytest.raises(InvalidKeyError):
        peer_id_bytes(b"\x01" * size)


def _b58(data: bytes) -> str:
    return base58.b58encode(data).decode()


VALID = peer_id_from_public_key(SigningKey(SEEDS[0]).public_key)
BAD_PEER_IDS = {
    "empty": "",
    "not base58": "12D3KooW0OIl",
    "sha256 multihash (Qm…)": _b58(bytes([0x12, 0x20]) + hashlib.sha256(b"rsa key").digest()),
    "secp256k1 key": _b58(bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21]) + b"\x02" * 33),
    "truncated": VALID[:-1],
    "extra byte": _b58(base58.b58decode(VALID) + b"\x00"),
    "trailing whitespace": VALID + " ",
    "multibase prefix": "z" + VALID,
}


@pytest.mark.parametrize("bad", BAD_PEER_IDS.values(), ids=BAD_PEER_IDS.keys())
def test_bad_peer_ids_are_validation_errors(bad: str) -> None:
    with pytest.raises(ValidationError):
        public_key_from_peer_id(bad)


def test_peer_id_that_is_not_a_string_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="string"):
        public_key_from_peer_id(base58.b58decode(VALID))  # type: ignore[arg-type]


def test_multiaddr_ipv4_parses_with_py_multiaddr() -> None:
    address = multiaddr("192.0.2.7", 4001, VALID)
    assert address == f"/ip4/192.0.2.7/tcp/4001/p2p/{VALID}"
    parsed = Multiaddr(address)
    assert str(parsed) == address
    assert parsed.value_for_protocol("p2p") == VALID


def test_multiaddr_ipv6_is_compressed_and_parses() -> None:
    address = multiaddr("2001:DB8:0:0:0:0:0:1", 65535, VALID)
    assert address == f"/ip6/2001:db8::1/tcp/65535/p2p/{VALID}"
    assert str(Multiaddr(address)) == address


@pytest.mark.parametrize(
    "host", ["example.com", "256.1.1.1", "1.2.3", " 1.2.3.4", "", "fe80::1%eth0", 16909060]
)
def test_multiaddr_refuses_bad_hosts(host: object) -> None:
    with pytest.raises(ValidationError):
        multiaddr(host, 4001, VALID)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, -1, 65536, True, "4001", 4001.0])
def test_multiaddr_refuses_bad_ports(port: object) -> None:
    with pytest.raises(ValidationError, match="port"):
        multiaddr("127.0.0.1", port, VALID)  # type: ignore[arg-type]


def test_multiaddr_refuses_bad_peer_id() -> None:
    with pytest.raises(ValidationError):
        multiaddr("127.0.0.1", 4001, BAD_PEER_IDS["sha256 multihash (Qm…)"])
