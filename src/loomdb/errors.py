"""The one exception tree of loomdb.

Every error loomdb raises on purpose is a :class:`LoomError`. Errors from the
libraries below us (cbor2, cryptography, PyNaCl, sqlite3, later libp2p and
Loro) are translated once, where we call them, into one of these classes, so a
caller never has to know which library failed. The CLI and (later) the HTTP API
map this tree to exit codes and status codes in one table each, keyed by
:attr:`LoomError.code`.

::

    LoomError
    ├── ValidationError            a bad argument from the caller (names, sizes, types)
    ├── EntryError                 an entry that must be refused; nothing of it is stored
    │   ├── MalformedEntryError      not canonical DAG-CBOR, wrong fields or field types
    │   ├── UnsupportedVersionError  entry format version this node does not speak
    │   ├── UnknownKindError         kind not in the node's accepted kinds
    │   ├── EntryLimitError          a structural limit is exceeded
    │   │   ├── EntryTooLargeError
    │   │   └── TooManyParentsError
    │   ├── CidMismatchError         the id sent with the entry is not the hash of its bytes
    │   └── SignatureError           the Ed25519 signature does not verify
    ├── CryptoKeyError             problems with key material
    │   ├── MissingKeyError          no key with the entry's key id is held ("no key")
    │   ├── DecryptionError          the payload does not authenticate under the key
    │   └── InvalidKeyError          key material of the wrong size or form
    ├── KeyringError               the keyring file at rest
    │   ├── KeyringLockedError       encrypted, and no passphrase was given
    │   ├── WrongPassphraseError     the passphrase does not open it
    │   └── KeyringCorruptError      unreadable or tampered file
    ├── StoreError                 a store cannot do what was asked
    │   ├── StoreClosedError
    │   ├── StoreCorruptError        the files on disk are not a loomdb store we can read
    │   └── HomeInUseError           another process (a running node) holds the node home
    ├── TransportError             moving bytes between nodes and clients
    │   ├── UnreachableError         nobody (or no loomdb node) answers at that address
    │   ├── AddressInUseError        cannot listen: the address is taken
    │   ├── TransportTimeoutError    no answer within the time-out (after any retries)
    │   └── FrameTooLargeError       a frame over the negotiated size limit
    ├── SyncError                  the sync protocol
    │   ├── ProtocolError            a message that does not parse or breaks the protocol
    │   ├── ProtocolVersionError     no protocol version in common (names the supported ones)
    │   └── RemoteError              the other side refused a request (carries its code)
    ├── TrustError                 membership, roles and keys of a managed space
    │   ├── NotMemberError           the author/user is not in the space's directory
    │   ├── RevokedError             the user was revoked (from a point in time on)
    │   ├── ForbiddenError           a member without the role this needs
    │   └── NotAdminError            a directory entry not signed by an admin
    ├── AuthError                  authentication on a transport
    │   ├── AuthRequiredError        no token, or an invalid one (HTTP 401)
    │   ├── ChallengeError           a replayed, expired, foreign or badly signed challenge
    │   ├── TokenError               an expired, foreign or tampered token
    │   └── NoLoginError             the node offers no login (anonymous use only)
    └── DocumentError              the document layer (CRDT, collections, queries)
        ├── SchemaError              a value breaks its collection's schema, or a bad schema
        ├── QueryError               a query the database cannot run (bad field, operator)
        ├── NotFoundError            no such document or collection
        ├── ConflictError            the document already exists, or is deleted
        └── ChangeRefusedError       an entry the document layer will not apply
                                     (bad delta, ops claiming another writer, bad parents)

Each class has a stable ``code`` (``"entry.signature"`` …) for machine use;
messages are for people and may change.
"""

from __future__ import annotations


def errors_by_code(*roots: type[LoomError]) -> dict[str, type[LoomError]]:
    """Every class under ``roots`` (included) by its ``code``: how a refusal's code
    that crossed the wire becomes its exception again."""
    found: dict[str, type[LoomError]] = {}
    todo = list(roots)
    while todo:
        cls = todo.pop()
        found[cls.code] = cls
        todo.extend(cls.__subclasses__())
    return found


class LoomError(Exception):
    """Root of every error loomdb raises on purpose."""

    code = "loom"
    index: int | None = None
    """Set when the error refuses one item of a batch (``Collection.create_many``):
    that item's position."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(LoomError):
    """A caller passed a value loomdb cannot accept (a name, a size, a type)."""

    code = "validation"


# --- entries ---------------------------------------------------------------


class EntryError(LoomError):
    """An entry must be refused. Nothing of it is stored; the rest of a batch is kept."""

    code = "entry"


class MalformedEntryError(EntryError):
    """Not canonical DAG-CBOR, or a field is missing, unknown or of the wrong type."""

    code = "entry.malformed"


class UnsupportedVersionError(EntryError):
    """The entry's format version is not one this node speaks."""

    code = "entry.version"


class UnknownKindError(EntryError):
    """The entry's kind is not one the receiving node accepts."""

    code = "entry.kind"


class EntryLimitError(EntryError):
    """A structural limit (size, parents, name length) is exceeded."""

    code = "entry.limit"


class EntryTooLargeError(EntryLimitError):
    code = "entry.too_large"


class TooManyParentsError(EntryLimitError):
    code = "entry.too_many_parents"


class CidMismatchError(EntryError):
    """The id that came with the entry is not the hash of the entry's bytes."""

    code = "entry.cid_mismatch"


class SignatureError(EntryError):
    """The entry's Ed25519 signature does not verify under its author key."""

    code = "entry.signature"


# --- keys ------------------------------------------------------------------


class CryptoKeyError(LoomError):
    """A problem with key material (named after the domain, not ``KeyError``)."""

    code = "key"


class MissingKeyError(CryptoKeyError):
    """No key with the entry's key id is held: the entry can be stored, not read."""

    code = "key.missing"


class DecryptionError(CryptoKeyError):
    """The payload does not authenticate: wrong key, or payload/header tampered."""

    code = "key.decrypt"


class InvalidKeyError(CryptoKeyError):
    """Key material of the wrong size or form."""

    code = "key.invalid"


# --- keyring ---------------------------------------------------------------


class KeyringError(LoomError):
    code = "keyring"


class KeyringLockedError(KeyringError):
    """The keyring is encrypted and no passphrase was given."""

    code = "keyring.locked"


class WrongPassphraseError(KeyringError):
    """The passphrase does not open the keyring."""

    code = "keyring.passphrase"


class KeyringCorruptError(KeyringError):
    """The keyring file cannot be read (truncated, edited, not a keyring)."""

    code = "keyring.corrupt"


# --- stores ----------------------------------------------------------------


class StoreError(LoomError):
    code = "store"


class StoreClosedError(StoreError):
    code = "store.closed"


class StoreCorruptError(StoreError):
    """The files on disk are not a loomdb store this version can read."""

    code = "store.corrupt"


class HomeInUseError(StoreError):
    """Another process holds the node home's lock: a node runs on it (see
    :mod:`loomdb.node.lock`)."""

    code = "store.home_in_use"


# --- documents -------------------------------------------------------------


class DocumentError(LoomError):
    code = "document"


class SchemaError(DocumentError):
    """A value does not satisfy its collection's schema, or a schema is malformed."""

    code = "document.schema"


class QueryError(DocumentError):
    """A query names a bad field or operator, or a value of the wrong type."""

    code = "document.query"


class NotFoundError(DocumentError):
    """No such document (or it was deleted), collection or version."""

    code = "document.not_found"


class ConflictError(DocumentError):
    """The document already exists (create) or was deleted (update)."""

    code = "document.conflict"


class ChangeRefusedError(DocumentError):
    """An entry the document layer will not apply: its delta is malformed, claims
    operations of another writer, depends on operations outside its ancestry, or
    its parents are not of its document."""

    code = "document.refused"


# --- transports ------------------------------------------------------------


class TransportError(LoomError):
    code = "transport"


class UnreachableError(TransportError):
    """No loomdb node answers at the address: refused, timed out, or not loomdb."""

    code = "transport.unreachable"


class AddressInUseError(TransportError):
    """The address to listen on is taken (another node?)."""

    code = "transport.address_in_use"


class TransportTimeoutError(TransportError):
    """No answer within the time-out, after any retries."""

    code = "transport.timeout"


class FrameTooLargeError(TransportError):
    """A frame larger than the limit; it is refused unread."""

    code = "transport.frame_too_large"


class SyncError(LoomError):
    """The sync protocol."""

    code = "sync"


class ProtocolError(SyncError):
    """A message that does not parse, or that breaks the protocol."""

    code = "sync.protocol"


class ProtocolVersionError(SyncError):
    """The two sides share no protocol version."""

    code = "sync.version"


class RemoteError(SyncError):
    """The remote side refused a request; ``remote_code`` is its error code."""

    code = "sync.remote"

    def __init__(self, message: str, remote_code: str = "loom") -> None:
        super().__init__(message)
        self.remote_code = remote_code


# --- trust and authentication --------------------------------------------------------


class TrustError(LoomError):
    """Membership, roles and keys of a managed space (its tenant directory)."""

    code = "trust"


class NotMemberError(TrustError):
    """The author of an entry, or the user asking, is not in the space's directory."""

    code = "trust.not_member"


class RevokedError(TrustError):
    """The user was revoked; entries made from the revocation on are refused."""

    code = "trust.revoked"


class ForbiddenError(TrustError):
    """A member without the role this needs (write to a collection, read a space…)."""

    code = "trust.forbidden"


class NotAdminError(TrustError):
    """A directory entry whose author was not an admin of the space when it was made."""

    code = "trust.not_admin"


class AuthError(LoomError):
    """Authentication on a transport (challenge-response and tokens)."""

    code = "auth"


class AuthRequiredError(AuthError):
    """The request needs a valid token (HTTP 401)."""

    code = "auth.required"


class ChallengeError(AuthError):
    """A challenge answer that is replayed, expired, issued by another server, or
    not signed by the user's key."""

    code = "auth.challenge"


class TokenError(AuthError):
    """A token that is expired, issued by another server, or tampered with."""

    code = "auth.token"


class NoLoginError(AuthError):
    """The node offers no login (an older node): only anonymous use is possible."""

    code = "auth.no_login"
