"""The tenant directory of a managed space: admin-signed entries, folded into a state.

The directory is the document ``$directory/log`` of the space. Its entries are
public (signed, not encrypted: key id null), so every node — a blind relay
too — reads them and checks membership with no decryption key. Each payload is
one operation, a canonical CBOR map:

=========== ==================================================================
``genesis`` ``{"op", "name", "user"}``: the first entry, signed by the root
            named in the space id; makes the root a member with every role.
``user``    ``{"op", "user"}``: add a user, or update its devices and label.
``role``    ``{"op", "user", "coll", "roles"}``: the roles of a user on a
            collection (``*``: every collection) from this entry's time on;
            an empty list removes them.
``revoke``  ``{"op", "user", "from"}``: the user is revoked from the HLC time
            ``from`` on: its entries made at or after it are refused.
``key``     ``{"op", "kid", "name", "version", "coll", "grants"}``: a version
            of a named key, wrapped (HPKE) to each reader: user id → bytes.
=========== ==================================================================

A user record is ``{"id", "x25519", "devices", "label"}``. Roles are
``read``, ``write``, ``admin`` and ``relay``.

**Folding.** The state is a pure function of the set of directory entries a
node holds: entries are taken parents first (height, then time, then CID) and
each operation counts only when its author was, at the entry's time, an admin
of the scope it touches (``admin`` on ``*``; for ``role`` and ``key`` on one
collection, ``admin`` on that collection is enough) and not revoked. An
operation that does not count is kept with its reason (:attr:`DirectoryState.ignored`).

Times are the entries' hybrid-logical-clock times, chosen by their authors:
a revoked user can still back-date entries to before ``from`` (see
``docs/trust.md``, "What the directory cannot prevent").
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from loomdb.entries.cid import CID
from loomdb.entries.entry import DIRECTORY_KIND, Entry
from loomdb.errors import (
    ForbiddenError,
    LoomError,
    NotAdminError,
    NotMemberError,
    RevokedError,
    ValidationError,
)
from loomdb.identity.peer_id import public_key_from_peer_id
from loomdb.identity.user import X25519_KEY_SIZE, public_key_from_user_id, user_id_from_public_key
from loomdb.trust.spaces import (
    ALL,
    DIRECTORY_COLLECTION,
    DIRECTORY_DOCUMENT,
    ManagedSpace,
    make_key_id,
)

READ, WRITE, ADMIN, RELAY = "read", "write", "admin", "relay"
ROLES: Final = (READ, WRITE, ADMIN, RELAY)
READERS: Final = frozenset({READ, ADMIN})
"""Roles that receive key grants (a relay role never does)."""
PULLERS: Final = frozenset({READ, ADMIN, RELAY})
"""Roles that may pull a collection's entries from a node."""
WRITERS: Final = frozenset({WRITE, ADMIN})
MAX_OP_BYTES: Final = 64 * 1024
MAX_DEVICES: Final = 64
MAX_GRANT_BYTES: Final = 512
OPS: Final = ("genesis", "user", "role", "revoke", "key")


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    x25519: bytes
    devices: tuple[str, ...] = ()
    label: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "x25519": self.x25519,
            "devices": list(self.devices),
            "label": self.label,
        }

    @classmethod
    def from_wire(cls, value: object) -> UserRecord:
        if not isinstance(value, dict) or set(value) != {"id", "x25519", "devices", "label"}:
            raise ValidationError("a user record is a map of id, x25519, devices, label")
        user_id, x25519, devices, label = (
            value["id"], value["x25519"], value["devices"], value["label"]
        )  # fmt: skip
        if not isinstance(user_id, str):
            raise ValidationError("a user id is a string")
        public_key_from_user_id(user_id)
        if type(x25519) is not bytes or len(x25519) != X25519_KEY_SIZE:
            raise ValidationError("an X25519 key is 32 bytes")
        if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
            raise ValidationError(f"devices is a list of at most {MAX_DEVICES} Peer IDs")
        for device in devices:
            if not isinstance(device, str):
                raise ValidationError("a device is a Peer ID string")
            public_key_from_peer_id(device)
        if not isinstance(label, str) or len(label) > 128 or not label.isprintable():
            raise ValidationError("a label is at most 128 printable characters")
        return cls(user_id, x25519, tuple(devices), label)


@dataclass(frozen=True, slots=True)
class KeyVersion:
    kid: str
    name: str
    version: int
    collection: str
    created_at: int
    grants: Mapping[str, bytes]


def encode_op(op: Mapping[str, Any]) -> bytes:
    return cbor2.dumps(dict(op), canonical=True)


def decode_op(payload: bytes) -> dict[str, Any]:
    """A directory payload → its operation; :class:`ValidationError` for anything else."""
    if len(payload) > MAX_OP_BYTES:
        raise ValidationError(f"a directory operation is at most {MAX_OP_BYTES} bytes")
    try:
        op = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types on junk
        raise ValidationError(f"a directory operation is not CBOR: {exc}") from None
    if not isinstance(op, dict) or op.get("op") not in OPS:
        raise ValidationError(f"a directory operation is a map whose 'op' is one of {OPS}")
    try:
        canonical = encode_op(op) == payload
    except Exception:  # cbor2 cannot re-encode what it decoded (a cyclic value)
        canonical = False
    if not canonical:
        raise ValidationError("a directory operation must be canonical CBOR")
    shape = {
        "genesis": {"op", "name", "user"},
        "user": {"op", "user"},
        "role": {"op", "user", "coll", "roles"},
        "revoke": {"op", "user", "from"},
        "key": {"op", "kid", "name", "version", "coll", "grants"},
    }[op["op"]]
    if set(op) != shape:
        raise ValidationError(f"a {op['op']!r} operation has exactly the fields {sorted(shape)}")
    kind = op["op"]
    if kind in ("genesis", "user"):
        op["user"] = UserRecord.from_wire(op["user"])
    elif kind in ("role", "revoke"):
        _user_id(op["user"])
    if kind == "role":
        roles = op["roles"]
        if not isinstance(roles, list) or any(r not in ROLES for r in roles):
            raise ValidationError(f"roles are a list of {ROLES}")
        _collection(op["coll"])
    if kind == "revoke" and (type(op["from"]) is not int or op["from"] < 0):
        raise ValidationError("'from' is a time (an HLC value)")
    if kind == "key":
        _collection(op["coll"])
        grants = op["grants"]
        if not isinstance(grants, dict) or len(grants) > 10_000:
            raise ValidationError("grants map user ids to wrapped keys")
        for user, blob in grants.items():
            _user_id(user)
            if type(blob) is not bytes or len(blob) > MAX_GRANT_BYTES:
                raise ValidationError("a wrapped key is at most 512 bytes")
    return op


def _user_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError("a user id is a string")
    public_key_from_user_id(value)
    return value


def _collection(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise ValidationError("a collection is a non-empty printable string (or '*')")
    return value


@dataclass
class DirectoryState:
    """What a space's directory says, folded from its entries (see the module doc)."""

    space: ManagedSpace
    users: dict[str, UserRecord] = field(default_factory=dict)
    roles: dict[tuple[str, str], list[tuple[int, frozenset[str]]]] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)
    keys: dict[str, KeyVersion] = field(default_factory=dict)
    genesis: CID | None = None
    applied: list[CID] = field(default_factory=list)
    ignored: dict[CID, str] = field(default_factory=dict)
    heads: list[Entry] = field(default_factory=list)
    last_order: tuple[int, int, bytes] | None = None
    """The fold order of the last entry applied."""

    def copy(self) -> DirectoryState:
        """An independent copy (to try a batch against without changing this state)."""
        return DirectoryState(
            self.space,
            dict(self.users),
            {k: list(v) for k, v in self.roles.items()},
            dict(self.revoked),
            dict(self.keys),
            self.genesis,
            list(self.applied),
            dict(self.ignored),
            list(self.heads),
            self.last_order,
        )

    # --- questions -----------------------------------------------------------------

    def roles_at(self, user_id: str, collection: str, at: int) -> frozenset[str]:
        """The roles ``user_id`` had on ``collection`` (its own and those on ``*``) at ``at``."""
        if user_id not in self.users:
            return frozenset()
        revoked = self.revoked.get(user_id)
        if revoked is not None and at >= revoked:
            return frozenset()
        found = _role_at(self.roles.get((user_id, ALL), ()), at)
        if collection != ALL:
            found |= _role_at(self.roles.get((user_id, collection), ()), at)
        return found

    def roles_now(self, user_id: str) -> dict[str, frozenset[str]]:
        """Every scope's current roles of a user (none when revoked)."""
        if user_id not in self.users or user_id in self.revoked:
            return {}
        out = {}
        for (user, coll), timeline in self.roles.items():
            if user == user_id and timeline and timeline[-1][1]:
                out[coll] = timeline[-1][1]
        return out

    def check_member(self, user_id: str) -> None:
        """May ``user_id`` authenticate now? Raises when not."""
        if user_id in self.revoked:
            raise RevokedError(f"user {user_id} was revoked from space {self.space.space}")
        if user_id not in self.users or not self.roles_now(user_id):
            raise NotMemberError(f"user {user_id} is not a member of space {self.space.space}")

    def check_author(self, entry: Entry) -> None:
        """May ``entry`` (not a directory entry) be stored: its author had write rights
        on its collection when it was made, and was not revoked."""
        if entry.kind == DIRECTORY_KIND or entry.collection == DIRECTORY_COLLECTION:
            raise ForbiddenError("directory entries live in '$directory/log' with kind 'directory'")
        self.check_writer(user_id_from_public_key(entry.author), entry.collection, entry.created_at)

    def check_writer(self, author: str, collection: str, at: int) -> None:
        """May ``author`` write to ``collection`` at time ``at``? Raises when not."""
        where = f"space {self.space.space}"
        if author not in self.users:
            raise NotMemberError(f"author {author} is not a member of {where}")
        revoked = self.revoked.get(author)
        if revoked is not None and at >= revoked:
            raise RevokedError(f"author {author} was revoked from {where} before this entry")
        if not self.roles_at(author, collection, at) & WRITERS:
            raise ForbiddenError(
                f"author {author} had no write role on {collection!r} in {where} "
                "when this entry was made"
            )

    def check_directory_entry(self, entry: Entry) -> dict[str, Any]:
        """May this directory entry be stored? Its operation, or an error."""
        if entry.collection != DIRECTORY_COLLECTION or entry.document != DIRECTORY_DOCUMENT:
            raise ForbiddenError("directory entries live in the document '$directory/log'")
        if entry.kind != DIRECTORY_KIND or entry.key_id is not None:
            raise ForbiddenError("directory entries are public entries of kind 'directory'")
        op = decode_op(entry.payload)
        reason = self._refusal(entry, op)
        if reason is not None:
            raise NotAdminError(reason)
        return op

    def readable(self, user_id: str) -> tuple[bool, frozenset[str]]:
        """(every collection?, the collections) ``user_id`` may pull now."""
        now = self.roles_now(user_id)
        every = bool(now.get(ALL, frozenset()) & PULLERS)
        return every, frozenset(c for c, r in now.items() if c != ALL and r & PULLERS)

    def is_admin(self, user_id: str, collection: str = ALL) -> bool:
        return bool({ADMIN} & self.roles_at(user_id, collection, _FOREVER))

    def readers(self, collection: str) -> list[UserRecord]:
        """Users who may read ``collection`` now (``*``: the whole space)."""
        out = []
        for user in self.users.values():
            now = self.roles_now(user.user_id)
            roles = now.get(ALL, frozenset()) | now.get(collection, frozenset())
            if roles & READERS:
                out.append(user)
        return out

    def key_versions(self, collection: str) -> list[KeyVersion]:
        """Versions of the key of exactly this scope, oldest first."""
        return sorted(
            (k for k in self.keys.values() if k.collection == collection), key=lambda k: k.version
        )

    def current_key(self, collection: str) -> KeyVersion | None:
        """The key new entries of ``collection`` use: its own key's latest version,
        else the space key's."""
        own = self.key_versions(collection) if collection != ALL else []
        versions = own or self.key_versions(ALL)
        return versions[-1] if versions else None

    # --- folding -------------------------------------------------------------------

    def _refusal(self, entry: Entry, op: Mapping[str, Any]) -> str | None:
        """Why ``op`` does not count in this state (None: it does)."""
        author = user_id_from_public_key(entry.author)
        if op["op"] == "genesis":
            if self.genesis is not None:
                return "the space already has its genesis entry"
            if entry.author != self.space.root_key or op["user"].user_id != self.space.root:
                return "the genesis entry is signed by the root named in the space id"
            if entry.height != 1:
                return "the genesis entry has no parents"
            return None
        if self.genesis is None:
            return "no genesis entry yet"
        scope = op.get("coll", ALL) if op["op"] in ("role", "key") else ALL
        if ADMIN not in self.roles_at(author, scope, entry.created_at):
            return f"author {author} was not an admin of {scope!r} at this entry's time"
        target = op["user"].user_id if op["op"] == "user" else op.get("user")
        if op["op"] == "user" and target == self.space.root and author != self.space.root:
            return "only the root changes its own record"
        if op["op"] == "user" and target in self.revoked:
            return f"user {target} was revoked; a revoked key cannot come back"
        if op["op"] in ("role", "revoke") and target not in self.users:
            return f"user {target} is not in the directory"
        if op["op"] in ("role", "revoke") and target == self.space.root:
            return "the root's roles cannot be changed"
        if op["op"] == "key":
            try:
                kid = make_key_id(self.space.space, op["name"], op["version"])
            except LoomError as exc:
                return exc.message
            held = self.keys.get(kid)
            if kid != op["kid"]:
                return "the key id does not match its name, version and space"
            if held is not None and held.collection != op["coll"]:
                return "this key version belongs to another collection"
        return None

    def apply(self, entry: Entry) -> None:
        """Fold one entry in (call in fold order)."""
        order = fold_order(entry)
        if self.last_order is None or order > self.last_order:
            self.last_order = order
        try:
            op = decode_op(entry.payload) if entry.kind == DIRECTORY_KIND else None
        except ValidationError as exc:
            self.ignored[entry.cid] = exc.message
            return
        if op is None:
            self.ignored[entry.cid] = "not a directory entry"
            return
        reason = self._refusal(entry, op)
        if reason is not None:
            self.ignored[entry.cid] = reason
            return
        at = entry.created_at
        kind = op["op"]
        if kind == "genesis":
            self.genesis = entry.cid
            self.users[op["user"].user_id] = op["user"]
            self.roles[(op["user"].user_id, ALL)] = [(0, frozenset(ROLES) - {RELAY})]
        elif kind == "user":
            self.users[op["user"].user_id] = op["user"]
        elif kind == "role":
            timeline = self.roles.setdefault((op["user"], op["coll"]), [])
            bisect.insort(timeline, (at, frozenset(op["roles"])), key=lambda t: t[0])
        elif kind == "revoke":
            held = self.revoked.get(op["user"])
            self.revoked[op["user"]] = op["from"] if held is None else min(held, op["from"])
        elif kind == "key":
            old = self.keys.get(op["kid"])
            grants = dict(old.grants) if old is not None else {}
            grants.update(op["grants"])
            created = old.created_at if old is not None else at
            self.keys[op["kid"]] = KeyVersion(
                op["kid"], op["name"], op["version"], op["coll"], created, grants
            )
        self.applied.append(entry.cid)


_FOREVER: Final = (1 << 64) - 1


def _role_at(timeline: Iterable[tuple[int, frozenset[str]]], at: int) -> frozenset[str]:
    found: frozenset[str] = frozenset()
    for ts, roles in timeline:
        if ts > at:
            break
        found = roles
    return found


def fold_order(entry: Entry) -> tuple[int, int, bytes]:
    return (entry.height, entry.created_at, entry.cid.binary)


def fold(space: ManagedSpace, entries: Iterable[Entry]) -> DirectoryState:
    """The state of ``space``'s directory given these entries (any order, duplicates ok)."""
    unique = {e.cid: e for e in entries if e.space == space.space}
    ordered = sorted(unique.values(), key=fold_order)
    late: set[CID] = set()  # ops whose author turned out revoked before they were made
    while True:
        state = DirectoryState(space)
        for entry in ordered:
            if entry.cid in late:
                state.ignored[entry.cid] = "its author was revoked before this entry's time"
                continue
            state.apply(entry)
        found = set()
        for cid in state.applied:
            entry = unique[cid]
            start = state.revoked.get(user_id_from_public_key(entry.author))
            if start is not None and entry.created_at >= start:
                found.add(cid)
        if found <= late:
            break
        late |= found  # grows every round: ends within len(entries) rounds
    parents = {p for e in unique.values() for p in e.parents}
    state.heads = [e for e in unique.values() if e.cid not in parents]
    return state
