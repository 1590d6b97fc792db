"""The keyring at rest: stable node identity, 0600 files, encryption, and clear errors."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from loomdb.errors import (
    KeyringCorruptError,
    KeyringError,
    KeyringLockedError,
    ValidationError,
    WrongPassphraseError,
)
from loomdb.identity.keyring import (
    DEFAULT_KDF_PARAMS,
    ENV_VAR,
    KdfParams,
    Keyring,
    secret_from_env,
)
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.identity.user import UserIdentity

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
SECRET = "correct horse battery staple"
LOGGER = "loomdb.keyring"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "keyring.json"


def open_ring(path: Path, secret: str | None = SECRET, **kwargs: Any) -> Keyring:
    kwargs.setdefault("kdf", FAST)
    return Keyring.open(path, secret, **kwargs)


def populated(path: Path, secret: str | None = SECRET) -> Keyring:
    ring = open_ring(path, secret)
    ring.add_user(UserIdentity.generate(), default=True)
    ring.add_user(UserIdentity.generate())
    ring.add_named_key(NamedKey.generate("space/notes@1"))
    ring.save()
    return ring


def read_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_bytes())
    return doc


def write_doc(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_same_keys(a: Keyring, b: Keyring) -> None:
    assert b.peer_id == a.peer_id
    assert b.node_key == a.node_key
    assert b.users == a.users
    assert b.default_user == a.default_user
    assert b.named_keys == a.named_keys


# --- create and reload ---------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET], ids=["plaintext", "encrypted"])
def test_reopen_gives_same_peer_id_and_keys(path: Path, secret: str | None) -> None:
    ring = populated(path, secret)
    assert ring.peer_id.startswith("12D3KooW")
    assert ring.default_user is not None
    assert len(ring.users) == 2

    again = open_ring(path, secret)

    assert_same_keys(ring, again)
    assert again.encrypted is (secret is not None)
    assert again.get_named_key("space/notes@1") == ring.get_named_key("space/notes@1")
    assert again.get_named_key("missing") is None


def test_node_key_comes_from_injected_random(path: Path) -> None:
    source = random.Random(42)
    expected_seed = random.Random(42).randbytes(32)
    ring = open_ring(path, None, random=source.randbytes)
    assert ring.node_key == SigningKey(expected_seed)


@pytest.mark.parametrize("secret", [None, SECRET], ids=["plaintext", "encrypted"])
def test_file_is_0600_on_create_and_after_save_in_0700_dir(path: Path, secret: str | None) -> None:
    ring = open_ring(path, secret)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700

    ring.add_named_key(NamedKey.generate("k@1"))
    ring.save()

    assert mode(path) == 0o600
    assert os.listdir(path.parent) == ["keyring.json"]  # no temp file left behind


def test_loosened_mode_is_restored_on_open(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    open_ring(path, SECRET)
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    open_ring(path, SECRET)

    assert mode(path) == 0o600
    assert "mode 644" in caplog.text


def test_failed_save_keeps_old_file_and_cleans_up(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = populated(path)
    before = path.read_bytes()
    ring.add_named_key(NamedKey.generate("k@2"))

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(KeyringError, match="No space left"):
        ring.save()

    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["keyring.json"]


def test_unreadable_path_is_a_keyring_error_not_corrupt(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot read") as info:
        open_ring(tmp_path, SECRET)  # a directory
    assert not isinstance(info.value, KeyringCorruptError)


# --- plaintext warnings --------------------------------------------------------------


def test_warning_logged_without_secret(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    open_ring(path, None)
    assert "NOT encrypted" in caplog.text
    assert ENV_VAR in caplog.text
    assert str(path) in caplog.text

    caplog.clear()
    open_ring(path, None)  # and on every later open
    assert [r.levelno for r in caplog.records if "NOT encrypted" in r.message] == [logging.WARNING]


def test_no_warning_when_encrypted(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    open_ring(path, SECRET)
    open_ring(path, SECRET)
    assert caplog.records == []


# --- encryption ----------------------------------------------------------------------


def _spellings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def _secrets(ring: Keyring) -> list[bytes]:
    found = [ring.node_key.seed]
    for user in ring.users:
        found += [user.signing_key.seed, user.x25519_private_bytes]
    found += [key.secret for key in ring.named_keys.values()]
    return found


def test_encrypted_file_contains_no_key_material(path: Path) -> None:
    ring = populated(path, SECRET)
    data = path.read_bytes()

    for secret in _secrets(ring):
        for spelling in _spellings(secret):
            assert spelling not in data
    assert ring.users[0].user_id.encode() not in data
    assert b"space/notes" not in data
    assert set(read_doc(path)) == {"format", "version", "encryption", "kdf", "nonce", "ciphertext"}


def test_plaintext_file_does_contain_key_material(path: Path) -> None:
    """Control for the test above: the search finds keys when they are there."""
    ring = populated(path, None)
    data = path.read_bytes()
    for secret in _secrets(ring):
        assert any(spelling in data for spelling in _spellings(secret))


def test_each_save_uses_a_fresh_nonce(path: Path) -> None:
    ring = open_ring(path, SECRET)
    first = read_doc(path)
    ring.save()
    second = read_doc(path)
    assert first["nonce"] != second["nonce"]
    assert first["ciphertext"] != second["ciphertext"]


def test_wrong_passphrase(path: Path) -> None:
    open_ring(path, SECRET)
    with pytest.raises(WrongPassphraseError, match=str(path)):
        open_ring(path, "incorrect horse")


def test_passphrase_is_unicode_normalised(path: Path) -> None:
    composed, decomposed = "caf\u00e9 secret", "cafe\u0301 secret"
    ring = open_ring(path, composed)
    assert open_ring(path, decomposed).peer_id == ring.peer_id


def test_no_secret_on_encrypted_file_is_locked(path: Path) -> None:
    open_ring(path, SECRET)
    with pytest.raises(KeyringLockedError) as info:
        open_ring(path, None)
    assert str(path) in info.value.message
    assert ENV_VAR in info.value.message


def test_empty_secret_is_refused(path: Path) -> None:
    with pytest.raises(ValidationError):
        open_ring(path, "")
    assert not path.exists()


# --- damaged files -------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET], ids=["plaintext", "encrypted"])
@pytest.mark.parametrize("keep", [0, 1, 0.5, -2])
def test_truncated_file_is_corrupt(path: Path, secret: str | None, keep: float) -> None:
    populated(path, secret)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(KeyringCorruptError):
        open_ring(path, secret)


def test_flipped_ciphertext_byte_is_detected_as_auth_failure(path: Path) -> None:
    populated(path, SECRET)
    doc = read_doc(path)
    ciphertext = bytearray(base64.b64decode(doc["ciphertext"]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    doc["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
    write_doc(path, doc)
    with pytest.raises(WrongPassphraseError):
        open_ring(path, SECRET)


@pytest.mark.parametrize(
    ("field", "value"),
    [("salt", base64.b64encode(b"\x00" * 16).decode()), ("iterations", 2)],
)
def test_edited_kdf_header_is_detected_as_auth_failure(path: Path, field: str, value: Any) -> None:
    open_ring(path, SECRET)
    doc = read_doc(path)
    doc["kdf"][field] = value
    write_doc(path, doc)
    with pytest.raises(WrongPassphraseError):
        open_ring(path, SECRET)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\xff\xfe\x00garbage", b"[]", b'"text"', b"{}", b"[" * 100_000],
    ids=["empty", "text", "binary", "list", "string", "empty object", "deep nesting"],
)
def test_garbage_is_corrupt(path: Path, content: bytes) -> None:
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(KeyringCorruptError):
        open_ring(path, SECRET)


def _edit(path: Path, secret: str | None, edit: Any) -> None:
    populated(path, secret)
    doc = read_doc(path)
    edit(doc)
    write_doc(path, doc)


@pytest.mark.parametrize("version", [3, 0, "1", True, None])
def test_unknown_format_version_is_corrupt(path: Path, version: Any) -> None:
    _edit(path, SECRET, lambda doc: doc.update(version=version))
    with pytest.raises(KeyringCorruptError, match="version"):
        open_ring(path, SECRET)


ENCRYPTED_EDITS = {
    "unknown encryption": lambda doc: doc.update(encryption="rot13"),
    "extra field": lambda doc: doc.update(note="hi"),
    "missing nonce": lambda doc: doc.pop("nonce"),
    "short nonce": lambda doc: doc.update(nonce=base64.b64encode(b"\x00" * 8).decode()),
    "ciphertext not base64": lambda doc: doc.update(ciphertext="%%%"),
    "kdf not an object": lambda doc: doc.update(kdf=[]),
    "huge memory": lambda doc: doc["kdf"].update(memory_kib=2**40),
    "lanes zero": lambda doc: doc["kdf"].update(lanes=0),
    "iterations float": lambda doc: doc["kdf"].update(iterations=1.0),
    "wrong format name": lambda doc: doc.update(format="other"),
}


@pytest.mark.parametrize("edit", ENCRYPTED_EDITS.values(), ids=ENCRYPTED_EDITS.keys())
def test_edited_encrypted_file_is_corrupt(path: Path, edit: Any) -> None:
    _edit(path, SECRET, edit)
    with pytest.raises(KeyringCorruptError):
        open_ring(path, SECRET)


PLAINTEXT_EDITS = {
    "node key not hex": lambda doc: doc["keys"].update(node_key="zz" * 32),
    "node key short": lambda doc: doc["keys"].update(node_key="ab" * 31),
    "user id edited": lambda doc: doc["keys"]["users"][0].update(
        user_id=doc["keys"]["users"][1]["user_id"]
    ),
    "duplicate user": lambda doc: doc["keys"]["users"].append(doc["keys"]["users"][0]),
    "default user not held": lambda doc: doc["keys"].update(default_user="z6Mkmissing"),
    "default user not a string": lambda doc: doc["keys"].update(default_user=3),
    "bad key id": lambda doc: doc["keys"]["named_keys"][0].update(key_id=" bad"),
    "named key short": lambda doc: doc["keys"]["named_keys"][0].update(secret="00"),
    "duplicate named key": lambda doc: doc["keys"]["named_keys"].append(
        doc["keys"]["named_keys"][0]
    ),
    "users not a list": lambda doc: doc["keys"].update(users={}),
    "keys not an object": lambda doc: doc.update(keys="x"),
    "missing field": lambda doc: doc["keys"].pop("named_keys"),
}


@pytest.mark.parametrize("edit", PLAINTEXT_EDITS.values(), ids=PLAINTEXT_EDITS.keys())
def test_edited_plaintext_file_is_corrupt(path: Path, edit: Any) -> None:
    _edit(path, None, edit)
    with pytest.raises(KeyringCorruptError):
        open_ring(path, None)


# --- upgrade and KDF parameters ------------------------------------------------------


def test_plaintext_is_upgraded_to_encrypted(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = populated(path, None)
    assert read_doc(path)["encryption"] == "none"
    caplog.set_level(logging.INFO, logger=LOGGER)

    upgraded = open_ring(path, SECRET)

    assert upgraded.encrypted
    assert "now encrypted" in caplog.text
    assert read_doc(path)["encryption"] != "none"
    assert mode(path) == 0o600
    for secret in _secrets(plain):
        assert secret.hex().encode() not in path.read_bytes()
    with pytest.raises(KeyringLockedError):
        open_ring(path, None)
    assert_same_keys(plain, open_ring(path, SECRET))


def test_kdf_params_are_persisted_and_used_on_reopen(path: Path) -> None:
    params = KdfParams(memory_kib=8 * 1024 + 8, iterations=2, lanes=2)
    open_ring(path, SECRET, kdf=params)
    kdf = read_doc(path)["kdf"]
    assert (kdf["memory_kib"], kdf["iterations"], kdf["lanes"]) == (8200, 2, 2)
    assert len(base64.b64decode(kdf["salt"])) == 16

    # the kdf argument only applies to new files: the stored parameters open it
    again = open_ring(path, SECRET, kdf=FAST)
    assert again.kdf_params == params
    again.save()
    assert read_doc(path)["kdf"] == kdf


def test_default_kdf_params_are_memory_hard(path: Path) -> None:
    assert KdfParams() == DEFAULT_KDF_PARAMS
    assert DEFAULT_KDF_PARAMS.memory_kib >= 64 * 1024
    assert DEFAULT_KDF_PARAMS.iterations >= 3
    Keyring.open(path, SECRET)  # no kdf argument: the defaults are written
    kdf = read_doc(path)["kdf"]
    assert kdf["memory_kib"] >= 64 * 1024
    assert kdf["iterations"] >= 3
    assert kdf["lanes"] == DEFAULT_KDF_PARAMS.lanes


@pytest.mark.parametrize(
    "kwargs",
    [{"lanes": 0}, {"iterations": 0}, {"memory_kib": 7, "lanes": 1}, {"iterations": True}],
)
def test_bad_kdf_params_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        KdfParams(**kwargs)


# --- contents API ---------------------------------------------------------------------


def test_conflicting_named_key_is_refused(path: Path) -> None:
    ring = open_ring(path, None)
    key = NamedKey.generate("space/a@1")
    ring.add_named_key(key)
    ring.add_named_key(NamedKey("space/a@1", key.secret))  # same key again: fine
    with pytest.raises(ValidationError, match="rotate"):
        ring.add_named_key(NamedKey.generate("space/a@1"))
    assert ring.named_keys == {"space/a@1": key}


def test_conflicting_user_is_refused_and_default_can_move(path: Path) -> None:
    ring = open_ring(path, None)
    first, second = UserIdentity.generate(), UserIdentity.generate()
    ring.add_user(first)
    assert ring.default_user is None
    ring.add_user(second, default=True)
    ring.add_user(first, default=True)
    assert ring.default_user == first
    with pytest.raises(ValidationError):
        ring.add_user(UserIdentity(first.signing_key, b"\x07" * 32))


def test_changes_are_written_only_by_save(path: Path) -> None:
    ring = open_ring(path, None)
    ring.add_named_key(NamedKey.generate("k@1"))
    assert open_ring(path, None).named_keys == {}
    ring.save()
    assert list(open_ring(path, None).named_keys) == ["k@1"]


def test_repr_shows_no_secrets(path: Path) -> None:
    ring = populated(path, SECRET)
    text = repr(ring)
    assert ring.peer_id in text
    for secret in _secrets(ring):
        assert secret.hex() not in text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, None), ({ENV_VAR: ""}, None), ({ENV_VAR: "s3cret "}, "s3cret "), ({"OTHER": "x"}, None)],
)
def test_secret_from_env(environ: dict[str, str], expected: str | None) -> None:
    assert secret_from_env(environ) == expected


def test_file_format_is_argon2id_then_aes_gcm_over_the_header(path: Path) -> None:
    """Pins the documented format: anyone with the passphrase can open it with stock tools."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    ring = populated(path, SECRET)
    doc = read_doc(path)
    kdf = doc["kdf"]
    key = Argon2id(
        salt=base64.b64decode(kdf["salt"]),
        length=32,
        iterations=kdf["iterations"],
        lanes=kdf["lanes"],
        memory_cost=kdf["memory_kib"],
    ).derive(SECRET.encode())
    nonce, ciphertext = base64.b64decode(doc.pop("nonce")), base64.b64decode(doc.pop("ciphertext"))
    header = {**doc, "nonce": base64.b64encode(nonce).decode()}
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()

    payload = json.loads(AESGCM(key).decrypt(nonce, ciphertext, aad))

    assert payload["node_key"] == ring.node_key.seed.hex()
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(nonce, ciphertext, None)  # the header is bound to the ciphertext
