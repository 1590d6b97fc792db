"""A node's keys at rest: one JSON file, encrypted under a passphrase when one is given.

The file holds the node key (the Ed25519 seed behind the node's libp2p Peer ID,
made on first open so the Peer ID stays stable), the user identities the node
holds and the named symmetric keys: which of them the node writes open spaces
with (its *default key*), and other material held under an id it already holds
(keys other nodes made under the same name, e.g. the ``default@1`` every home
made before key ids carried fingerprints). With a passphrase, the file holds only the
KDF parameters, salt, nonce and ciphertext: the passphrase goes through
Argon2id (memory-hard, so guessing costs memory as well as time) and the key
material is sealed with AES-256-GCM, the rest of the file's header being the
associated data. Without one, the keys are stored in plain JSON and a warning
is logged on every open.

Changes are kept in memory until :meth:`Keyring.save`; every write replaces the
file atomically and the file is always mode 0600. There is no locking between
processes: two processes saving one keyring at once keep the last write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from loomdb.errors import (
    KeyringCorruptError,
    KeyringError,
    KeyringLockedError,
    LoomError,
    ValidationError,
    WrongPassphraseError,
)
from loomdb.files import atomic_write
from loomdb.identity.keys import NamedKey, RandomSource, SigningKey, key_fingerprint
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.identity.user import UserIdentity

ENV_VAR = "LOOMDB_KEYRING_SECRET"
FORMAT = "loomdb-keyring"
VERSION = 2
READS = (1, 2)  # version 1: no default key, no other material
_PLAIN = "none"
_SEALED = "argon2id+aes-256-gcm"
SALT_SIZE = 16
NONCE_SIZE = 12
_FILE_KEY_SIZE = 32
# Upper bounds for parameters read from a file, so an edited file cannot make
# opening it allocate many GiB or run for hours.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_ITERATIONS = 64
_MAX_LANES = 64
_HEX_32 = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("loomdb.keyring")


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters; stored in the file, so raising the defaults later
    does not lock out existing keyrings. The defaults follow RFC 9106's
    second recommended option (64 MiB, 3 passes, 4 lanes)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("lanes", self.lanes, 1, _MAX_LANES),
            ("iterations", self.iterations, 1, _MAX_ITERATIONS),
            ("memory_kib", self.memory_kib, 8 * self.lanes, _MAX_MEMORY_KIB),
        ):
            if type(value) is not int or not low <= value <= high:
                raise ValidationError(
                    f"KDF {name} must be an integer in {low}-{high}, not {value!r}"
                )

    def derive(self, secret: str, salt: bytes) -> bytes:
        """The 32-byte file key. The passphrase is NFC-normalised so the same
        characters typed on different systems give the same key."""
        kdf = Argon2id(
            salt=salt,
            length=_FILE_KEY_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(unicodedata.normalize("NFC", secret).encode("utf-8"))


DEFAULT_KDF_PARAMS = KdfParams()


def secret_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The keyring passphrase from ``LOOMDB_KEYRING_SECRET``; None if unset or empty."""
    return environ.get(ENV_VAR) or None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _aad(header: Mapping[str, object]) -> bytes:
    """Canonical bytes of the header, so editing any header field fails authentication."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Keyring:
    """The keys of one node. Use :meth:`open`; the constructor does no I/O."""

    def __init__(self, path: Path, node_key: SigningKey, random: RandomSource) -> None:
        self._path = path
        self._node_key = node_key
        self._random = random
        self._users: dict[str, UserIdentity] = {}
        self._default_user_id: str | None = None
        self._named_keys: dict[str, NamedKey] = {}
        self._other_keys: dict[str, list[NamedKey]] = {}
        self._default_key_id: str | None = None
        self._kdf: KdfParams | None = None  # None: the file is plaintext
        self._salt = b""
        self._aead: AESGCM | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        secret: str | None,
        *,
        kdf: KdfParams = DEFAULT_KDF_PARAMS,
        random: RandomSource = os.urandom,
    ) -> Keyring:
        """Load the keyring at ``path``, or create it with a new node key if missing.

        ``kdf`` applies when a file is created or upgraded from plaintext; an
        encrypted file is opened with the parameters stored in it.
        """
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValidationError("the keyring passphrase must be a non-empty string (or None)")
        file = Path(path)
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            return cls._create(file, secret, kdf, random)
        except OSError as exc:
            raise KeyringError(f"cannot read keyring {file}: {exc.strerror}") from exc
        doc = _load_json(raw, file, "keyring file")
        if doc.get("format") != FORMAT:
            raise KeyringCorruptError(f"{file} is not a loomdb keyring")
        version = doc.get("version")
        if type(version) is not int or version not in READS:
            raise KeyringCorruptError(
                f"keyring {file} has format version {version!r}; this loomdb reads "
                + " and ".join(map(str, READS))
            )
        encryption = doc.get("encryption")
        if encryption == _PLAIN:
            _expect_fields(doc, {"format", "version", "encryption", "keys"}, file)
            ring = cls._from_payload(file, doc["keys"], version, random)
        elif encryption == _SEALED:
            if secret is None:
                raise KeyringLockedError(
                    f"keyring {file} is encrypted: set {ENV_VAR} to its passphrase"
                )
            ring = cls._unseal(file, doc, secret, random)
        else:
            raise KeyringCorruptError(f"keyring {file}: unknown encryption {encryption!r}")
        _tighten_mode(file)
        if ring._aead is None and secret is not None:
            ring._set_secret(secret, kdf)
            ring.save()
            log.info("keyring %s was unencrypted; it is now encrypted with the passphrase", file)
        elif ring._aead is None:
            _warn_plaintext(file)
        return ring

    @classmethod
    def _create(
        cls, file: Path, secret: str | None, kdf: KdfParams, random: RandomSource
    ) -> Keyring:
        ring = cls(file, SigningKey.generate(random), random)
        if secret is not None:
            ring._set_secret(secret, kdf)
        try:
            file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyringError(f"cannot create directory {file.parent}: {exc.strerror}") from exc
        ring.save()
        log.info("created keyring %s for node %s", file, ring.peer_id)
        if secret is None:
            _warn_plaintext(file)
        return ring

    @classmethod
    def _unseal(
        cls, file: Path, doc: dict[str, object], secret: str, random: RandomSource
    ) -> Keyring:
        _expect_fields(doc, {"format", "version", "encryption", "kdf", "nonce", "ciphertext"}, file)
        kdf_doc = doc["kdf"]
        if not isinstance(kdf_doc, dict):
            raise KeyringCorruptError(f"keyring {file}: 'kdf' is not an object")
        _expect_fields(kdf_doc, {"memory_kib", "iterations", "lanes", "salt"}, file)
        try:
            params = KdfParams(kdf_doc["memory_kib"], kdf_doc["iterations"], kdf_doc["lanes"])
        except ValidationError as exc:
            raise KeyringCorruptError(f"keyring {file}: {exc.message}") from exc
        salt = _b64_field(kdf_doc, "salt", SALT_SIZE, file)
        nonce = _b64_field(doc, "nonce", NONCE_SIZE, file)
        ciphertext = _b64_field(doc, "ciphertext", None, file)
        key = params.derive(secret, salt)
        header = {name: value for name, value in doc.items() if name != "ciphertext"}
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, _aad(header))
        except InvalidTag as exc:
            raise WrongPassphraseError(
                f"the passphrase does not open keyring {file} (or the file was modified)"
            ) from exc
        payload = _load_json(plaintext, file, "decrypted keyring")
        ring = cls._from_payload(file, payload, doc["version"], random)
        ring._kdf, ring._salt, ring._aead = params, salt, AESGCM(key)
        return ring

    @classmethod
    def _from_payload(
        cls, file: Path, payload: object, version: object, random: RandomSource
    ) -> Keyring:
        """Rebuild a keyring from the key material object, turning any bad value into
        :class:`KeyringCorruptError`."""
        if not isinstance(payload, dict):
            raise KeyringCorruptError(f"keyring {file}: the keys are not an object")
        fields = {"node_key", "users", "default_user", "named_keys"}
        if version != 1:
            fields |= {"default_key", "other_keys"}
        _expect_fields(payload, fields, file)
        users, named_keys = payload["users"], payload["named_keys"]
        others = payload.get("other_keys", [])
        if not all(isinstance(v, list) for v in (users, named_keys, others)):
            raise KeyringCorruptError(
                f"keyring {file}: 'users', 'named_keys' and 'other_keys' must be lists"
            )
        try:
            ring = cls(file, SigningKey(_hex_32(payload["node_key"], "node_key")), random)
            for entry in users:
                user = UserIdentity.from_dict(entry)
                if user.user_id in ring._users:
                    raise ValidationError(f"user {user.user_id} is listed twice")
                ring._users[user.user_id] = user
            for entry in named_keys:
                key = _named_key(entry)
                if key.key_id in ring._named_keys:
                    raise ValidationError(f"named key {key.key_id!r} is listed twice")
                ring._named_keys[key.key_id] = key
            for entry in others:
                key = _named_key(entry)
                if key.key_id not in ring._named_keys:
                    raise ValidationError(f"other material for {key.key_id!r}: that id is not held")
                if key in ring.keys_for(key.key_id):
                    raise ValidationError(f"named key {key.key_id!r} is listed twice")
                ring._other_keys.setdefault(key.key_id, []).append(key)
        except LoomError as exc:
            raise KeyringCorruptError(f"keyring {file}: {exc.message}") from exc
        default_key = payload.get("default_key")
        if default_key is not None and (
            not isinstance(default_key, str) or default_key not in ring._named_keys
        ):
            raise KeyringCorruptError(f"keyring {file}: default key {default_key!r} is not held")
        ring._default_key_id = default_key
        default = payload["default_user"]
        if default is not None and (not isinstance(default, str) or default not in ring._users):
            raise KeyringCorruptError(f"keyring {file}: default user {default!r} is not held")
        ring._default_user_id = default
        return ring

    def _set_secret(self, secret: str, kdf: KdfParams) -> None:
        self._kdf, self._salt = kdf, self._random(SALT_SIZE)
        self._aead = AESGCM(kdf.derive(secret, self._salt))

    # --- reading ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def kdf_params(self) -> KdfParams | None:
        """The Argon2id parameters of the file, or None if it is plaintext."""
        return self._kdf

    @property
    def node_key(self) -> SigningKey:
        """The node's libp2p identity key."""
        return self._node_key

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self._node_key.public_key)

    @property
    def users(self) -> list[UserIdentity]:
        return list(self._users.values())

    @property
    def default_user(self) -> UserIdentity | None:
        return None if self._default_user_id is None else self._users[self._default_user_id]

    @property
    def named_keys(self) -> dict[str, NamedKey]:
        return dict(self._named_keys)

    def get_named_key(self, key_id: str) -> NamedKey | None:
        return self._named_keys.get(key_id)

    def keys_for(self, key_id: str) -> list[NamedKey]:
        """Every material held under ``key_id``: the named key, then other material
        imported under the same id (:meth:`import_key`). Empty when none is held."""
        held = self._named_keys.get(key_id)
        return [] if held is None else [held, *self._other_keys.get(key_id, ())]

    @property
    def default_key(self) -> NamedKey | None:
        """The key this node writes open spaces with (None until one is set)."""
        return None if self._default_key_id is None else self._named_keys[self._default_key_id]

    def fingerprint(self) -> str:
        """A digest of which materials are held under which ids (no secret can be
        learnt from it): it changes exactly when a key is added."""
        held = sorted(
            f"{key.key_id} {key_fingerprint(key.secret)}"
            for kid in self._named_keys
            for key in self.keys_for(kid)
        )
        return hashlib.blake2b("\n".join(held).encode(), digest_size=16).hexdigest()

    # --- changing (in memory until save) ---------------------------------------

    def add_user(self, identity: UserIdentity, default: bool = False) -> None:
        """Hold ``identity`` (again: a no-op) and optionally make it the default user."""
        held = self._users.get(identity.user_id)
        if held is not None and held != identity:
            raise ValidationError(f"a different identity with user id {identity.user_id} is held")
        self._users[identity.user_id] = identity
        if default:
            self._default_user_id = identity.user_id

    def add_named_key(self, key: NamedKey) -> None:
        """Hold ``key``. A key id names one secret forever: entries encrypted under it
        would become unreadable if it were replaced, so a different secret is refused."""
        held = self._named_keys.get(key.key_id)
        if held is not None and held.secret != key.secret:
            raise ValidationError(f"a different key with id {key.key_id!r} is held; rotate instead")
        self._named_keys[key.key_id] = key

    def import_key(self, key: NamedKey) -> bool:
        """Hold ``key``, a key another node made (give it to this node this way to let it
        read what that node wrote). False if this material was held already.

        When a different key with the same id is held — two nodes made keys of one
        name, like the ``default@1`` of homes made before ids carried fingerprints —
        both are kept: readers try each. Refused when the held key's id names the
        held material (:attr:`NamedKey.names_its_material`): no other key is that key."""
        held = self.keys_for(key.key_id)
        if key in held:
            return False
        if held and held[0].names_its_material:
            raise ValidationError(
                f"key {key.key_id!r} is held, and its id is the fingerprint of the held "
                "material: this is other material under its id"
            )
        if held:
            self._other_keys.setdefault(key.key_id, []).append(key)
        else:
            self._named_keys[key.key_id] = key
        return True

    def set_default_key(self, key_id: str) -> None:
        """Write open spaces with the held key ``key_id`` from now on (what was written
        under the previous default stays readable: its key stays held)."""
        if key_id not in self._named_keys:
            raise ValidationError(f"no key {key_id!r} is held")
        self._default_key_id = key_id

    def save(self) -> None:
        """Write the keyring: a fresh nonce each time, then an atomic replace of the file."""
        payload = {
            "node_key": self._node_key.seed.hex(),
            "users": [user.to_dict() for user in self._users.values()],
            "default_user": self._default_user_id,
            "named_keys": [_named_key_json(key) for key in self._named_keys.values()],
            "default_key": self._default_key_id,
            "other_keys": [_named_key_json(k) for keys in self._other_keys.values() for k in keys],
        }
        doc: dict[str, object] = {"format": FORMAT, "version": VERSION}
        if self._aead is None or self._kdf is None:
            doc |= {"encryption": _PLAIN, "keys": payload}
        else:
            kdf, nonce = self._kdf, self._random(NONCE_SIZE)
            doc |= {
                "encryption": _SEALED,
                "kdf": {
                    "memory_kib": kdf.memory_kib,
                    "iterations": kdf.iterations,
                    "lanes": kdf.lanes,
                    "salt": _b64(self._salt),
                },
                "nonce": _b64(nonce),
            }
            sealed = self._aead.encrypt(nonce, json.dumps(payload).encode("utf-8"), _aad(doc))
            doc["ciphertext"] = _b64(sealed)
        try:
            atomic_write(self._path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            raise KeyringError(f"cannot write keyring {self._path}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        state = "encrypted" if self.encrypted else "plaintext"
        return f"Keyring({str(self._path)!r}, {state}, peer_id={self.peer_id})"


# --- file helpers ---------------------------------------------------------------


def _named_key(entry: object) -> NamedKey:
    if not isinstance(entry, dict) or set(entry) != {"key_id", "secret"}:
        raise ValidationError("a named key is an object with key_id and secret")
    return NamedKey(entry["key_id"], _hex_32(entry["secret"], "named key secret"))


def _named_key_json(key: NamedKey) -> dict[str, str]:
    return {"key_id": key.key_id, "secret": key.secret.hex()}


def _load_json(raw: bytes, file: Path, what: str) -> dict[str, object]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise KeyringCorruptError(f"{what} {file} is not valid JSON (truncated?)") from exc
    if not isinstance(doc, dict):
        raise KeyringCorruptError(f"{what} {file} is not a JSON object")
    return doc


def _expect_fields(obj: Mapping[str, object], names: set[str], file: Path) -> None:
    if set(obj) != names:
        raise KeyringCorruptError(
            f"keyring {file}: expected fields {sorted(names)}, found {sorted(obj)}"
        )


def _b64_field(obj: Mapping[str, object], name: str, size: int | None, file: Path) -> bytes:
    value = obj[name]
    try:
        if not isinstance(value, str):
            raise ValueError(name)
        data = base64.b64decode(value, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise KeyringCorruptError(f"keyring {file}: {name!r} is not base64") from exc
    if size is not None and len(data) != size:
        raise KeyringCorruptError(f"keyring {file}: {name!r} is not {size} bytes")
    return data


def _hex_32(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX_32.match(value):
        raise ValidationError(f"{what} must be 64 lowercase hex digits")
    return bytes.fromhex(value)


def _tighten_mode(file: Path) -> None:
    """A keyring others can read defeats its purpose: restore 0600 if it was loosened."""
    try:
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            file.chmod(0o600)
            log.warning("keyring %s had mode %o; set it to 600", file, mode)
    except OSError as exc:
        log.warning("keyring %s: cannot check or set its mode: %s", file, exc.strerror)


def _warn_plaintext(file: Path) -> None:
    log.warning(
        "keyring %s is NOT encrypted: anyone who can read it has this node's keys. "
        "Set %s to a passphrase to encrypt it.",
        file,
        ENV_VAR,
    )
