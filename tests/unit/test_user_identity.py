"""User identities: did:key-style user ids, independent X25519 keys, dict round trip."""

from __future__ import annotations

import random

import base58
import nacl.bindings
import nacl.public
import pytest
from multiformats import multibase, multicodec

from loomdb.errors import InvalidKeyError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.identity.user import (
    PublicUser,
    UserIdentity,
    public_key_from_user_id,
    user_id_from_public_key,
)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def make_user(seed: int = 1) -> UserIdentity:
    return UserIdentity.generate(seeded(seed).randbytes)


@pytest.mark.parametrize("seed", range(10))
def test_user_id_matches_multiformats_did_key_encoding(seed: int) -> None:
    public_key = SigningKey(seeded(seed).randbytes(32)).public_key
    expected = multibase.encode(multicodec.wrap("ed25519-pub", public_key), "base58btc")

    user_id = user_id_from_public_key(public_key)

    assert user_id == expected
    assert user_id.startswith("z6Mk")
    assert public_key_from_user_id(user_id) == public_key
    assert multicodec.unwrap(multibase.decode(user_id)) == (
        multicodec.get("ed25519-pub"),
        public_key,
    )


def test_user_id_is_stable_for_the_same_keys() -> None:
    assert make_user(7).user_id == make_user(7).user_id
    assert make_user(7) == make_user(7)
    assert make_user(7).user_id != make_user(8).user_id


def test_generate_uses_the_injected_random_source() -> None:
    source = seeded(3)
    seed, x25519 = source.randbytes(32), source.randbytes(32)
    user = make_user(3)
    assert user.signing_key.seed == seed
    assert user.x25519_private_bytes == x25519
    assert user.user_id == user_id_from_public_key(SigningKey(seed).public_key)


def test_x25519_key_is_independent_and_agrees_with_libsodium() -> None:
    user = make_user(4)
    # PyNaCl computes the same public key from the same private bytes
    assert user.x25519_public_key == bytes(
        nacl.public.PrivateKey(user.x25519_private_bytes).public_key
    )
    # not derived from the Ed25519 key
    converted = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(user.signing_key.public_key)
    assert user.x25519_public_key != converted
    assert user.x25519_private_bytes != user.signing_key.seed


def test_two_users_agree_on_a_shared_secret() -> None:
    alice, bob = make_user(5), make_user(6)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    ab = alice.x25519_private_key.exchange(X25519PublicKey.from_public_bytes(bob.x25519_public_key))
    ba = bob.x25519_private_key.exchange(X25519PublicKey.from_public_bytes(alice.x25519_public_key))
    assert ab == ba


def test_public_view_holds_only_public_keys() -> None:
    user = make_user(9)
    public = user.public()
    assert public == PublicUser(user.user_id, user.signing_key.public_key, user.x25519_public_key)
    with pytest.raises(AttributeError):
        public.user_id = "z6Mkother"  # type: ignore[misc]


def test_public_user_refuses_mismatched_keys() -> None:
    user, other = make_user(1), make_user(2)
    with pytest.raises(ValidationError, match="does not match"):
        PublicUser(user.user_id, other.signing_key.public_key, user.x25519_public_key)
    with pytest.raises(InvalidKeyError):
        PublicUser(user.user_id, user.signing_key.public_key, b"\x00" * 31)


def test_repr_shows_no_secrets() -> None:
    user = make_user(10)
    text = repr(user) + str(user) + repr(user.public())
    assert user.user_id in text
    for secret in (user.signing_key.seed, user.x25519_private_bytes):
        assert secret.hex() not in text
        assert repr(secret) not in text


def test_dict_round_trip() -> None:
    user = make_user(11)
    data = user.to_dict()
    assert set(data) == {"user_id", "signing_seed", "x25519_private"}
    assert all(isinstance(value, str) for value in data.values())
    restored = UserIdentity.from_dict(data)
    assert restored == user
    assert restored.x25519_public_key == user.x25519_public_key


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"user_id": "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"}, "does not match"),
        ({"signing_seed": "AB" * 32}, "hex"),
        ({"signing_seed": "ab" * 31}, "hex"),
        ({"x25519_private": None}, "hex"),
        ({"extra": "x"}, "unknown"),
    ],
)
def test_from_dict_refuses_edited_data(change: dict[str, object], match: str) -> None:
    data: dict[str, object] = {**make_user(12).to_dict(), **change}
    with pytest.raises(ValidationError, match=match):
        UserIdentity.from_dict(data)


def test_from_dict_refuses_missing_field() -> None:
    data = make_user(12).to_dict()
    del data["x25519_private"]
    with pytest.raises(ValidationError):
        UserIdentity.from_dict(data)


def _z(data: bytes) -> str:
    return "z" + base58.b58encode(data).decode()


GOOD = make_user(13).user_id
BAD_USER_IDS = {
    "empty": "",
    "did prefix": "did:key:" + GOOD,
    "no multibase prefix": GOOD[1:],
    "not base58": "z6Mk0OIl",
    "secp256k1 multicodec": _z(bytes([0xE7, 0x01]) + b"\x02" * 33),
    "short key": _z(bytes([0xED, 0x01]) + b"\x01" * 31),
    "trailing whitespace": GOOD + "\n",
}


@pytest.mark.parametrize("bad", BAD_USER_IDS.values(), ids=BAD_USER_IDS.keys())
def test_bad_user_ids_are_validation_errors(bad: str) -> None:
    with pytest.raises(ValidationError):
        public_key_from_user_id(bad)


def test_user_id_of_wrong_size_key_is_invalid_key() -> None:
    with pytest.raises(InvalidKeyError):
        user_id_from_public_key(b"\x00" * 33)


def test_constructor_checks_key_sizes() -> None:
    with pytest.raises(InvalidKeyError):
        UserIdentity(SigningKey(b"\x01" * 32), b"\x02" * 16)
