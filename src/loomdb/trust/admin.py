"""``NodeTrust``: a node's side of trust — its identity, the spaces it administers or
joined, and the keys granted to its user.

Administration writes directory entries (see :mod:`loomdb.trust.directory`)
signed by the node's user and stores them through the guarded store, so they
pass the same checks as anybody's. Key material never leaves the node except
wrapped (HPKE) to a reader's X25519 key inside a directory ``key`` entry.

Paste-able forms (base64url, no padding):

* a **user card** ``loomdb-user1:<CBOR user record>``: what an admin needs to
  add a user (its user id, X25519 key, devices' Peer IDs, label);
* an **invitation** ``loomdb-invite1:<zlib(CBOR {"space", "entries"})>``: the
  space id and its signed directory entries, so the invited node checks them
  against the root named in the space id and knows the space with no other
  trust.
"""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import cbor2

from loomdb.clock import Clock, HybridLogicalClock, SystemClock
from loomdb.entries.entry import DIRECTORY_KIND, Entry, build_entry, decode_entry
from loomdb.errors import (
    ConflictError,
    ForbiddenError,
    LoomError,
    MissingKeyError,
    NotFoundError,
    NotMemberError,
    ValidationError,
)
from loomdb.identity.keys import NamedKey
from loomdb.node.home import NodeHome
from loomdb.stores.base import ContentAddressedStore, PutStatus
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import (
    READERS,
    ROLES,
    DirectoryState,
    KeyVersion,
    UserRecord,
    encode_op,
    fold_order,
)
from loomdb.trust.grants import unwrap_key, wrap_key
from loomdb.trust.spaces import (
    ALL,
    DIRECTORY_COLLECTION,
    DIRECTORY_DOCUMENT,
    is_managed,
    key_name,
    make_key_id,
    make_space_id,
)

CARD_PREFIX: Final = "loomdb-user1:"
INVITE_PREFIX: Final = "loomdb-invite1:"
MAX_INVITATION_BYTES: Final = 8 << 20
MAX_PARENTS: Final = 32

log = logging.getLogger("loomdb.trust")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValidationError(f"this {what} is not base64url (was it cut when pasted?)") from None


def encode_card(record: UserRecord) -> str:
    return CARD_PREFIX + _b64(encode_op(record.to_wire()))


def decode_card(card: str) -> UserRecord:
    """A user card → its record; :class:`ValidationError` for anything else."""
    if not isinstance(card, str) or not card.strip().startswith(CARD_PREFIX):
        raise ValidationError(f"a user card starts with {CARD_PREFIX!r}")
    raw = _unb64(card.strip()[len(CARD_PREFIX) :], "user card")
    try:
        value = cbor2.loads(raw)
    except Exception:
        raise ValidationError("this user card does not decode (was it cut when pasted?)") from None
    return UserRecord.from_wire(value)


def encode_invitation(space: str, entries: Iterable[Entry]) -> str:
    ordered = sorted(entries, key=fold_order)
    body = cbor2.dumps({"space": space, "entries": [e.raw for e in ordered]}, canonical=True)
    return INVITE_PREFIX + _b64(zlib.compress(body, 9))


def decode_invitation(text: str) -> tuple[str, list[Entry]]:
    """An invitation → (space id, its directory entries, each verified)."""
    if not isinstance(text, str) or not text.strip().startswith(INVITE_PREFIX):
        raise ValidationError(f"an invitation starts with {INVITE_PREFIX!r}")
    packed = _unb64(text.strip()[len(INVITE_PREFIX) :], "invitation")
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(packed, MAX_INVITATION_BYTES)
        if inflater.unconsumed_tail:
            raise ValidationError("this invitation is too large")
        value = cbor2.loads(body)
    except (zlib.error, ValueError, cbor2.CBORDecodeError):
        raise ValidationError("this invitation does not decode (was it cut when pasted?)") from None
    if not isinstance(value, dict) or set(value) != {"space", "entries"}:
        raise ValidationError("an invitation holds a space id and directory entries")
    space, raws = value["space"], value["entries"]
    if not isinstance(space, str) or not is_managed(space) or not isinstance(raws, list):
        raise ValidationError("an invitation names a managed space and lists entries")
    entries = []
    for raw in raws:
        if type(raw) is not bytes:
            raise ValidationError("an invitation's entries are bytes")
        try:
            entry = decode_entry(raw)
        except LoomError as exc:
            raise ValidationError(f"an entry of this invitation is bad: {exc.message}") from None
        if entry.space != space or entry.kind != DIRECTORY_KIND:
            raise ValidationError("an invitation carries only its space's directory entries")
        entries.append(entry)
    return space, entries


class NodeTrust:
    """Identity, spaces and keys of one node; the daemon puts it on ``app.state.trust``."""

    def __init__(
        self,
        home: NodeHome,
        store: ContentAddressedStore,
        book: DirectoryBook,
        *,
        clock: Clock | None = None,
        relay: bool = False,
    ) -> None:
        self.home = home
        self.store = store
        self.book = book
        self.relay = relay
        self._hlc = HybridLogicalClock(clock or SystemClock())

    # --- identity ----------------------------------------------------------------------

    @property
    def user_id(self) -> str:
        return self.home.user.user_id

    def record(self) -> UserRecord:
        user = self.home.user
        return UserRecord(user.user_id, user.x25519_public_key, (self.home.peer_id,), "")

    def card(self) -> str:
        return encode_card(self.record())

    def identity(self) -> dict[str, Any]:
        return {
            "user": self.user_id,
            "card": self.card(),
            "peer_id": self.home.peer_id,
            "x25519": self.home.user.x25519_public_key.hex(),
        }

    # --- reading -----------------------------------------------------------------------

    def _state(self, space: str) -> DirectoryState:
        state = self.book.state(space)
        if state is None or state.genesis is None:
            raise NotFoundError(f"this node holds no directory for space {space!r}")
        return state

    def space_info(self, space: str) -> dict[str, Any]:
        state = self._state(space)
        roles = state.roles_now(self.user_id)
        key = state.current_key(ALL)
        return {
            "space": space,
            "name": state.space.name,
            "root": state.space.root,
            "admin": state.is_admin(self.user_id),
            "roles": {c: sorted(r) for c, r in sorted(roles.items())},
            "users": len(state.users),
            "key": key.kid if key is not None else None,
        }

    def spaces(self) -> list[dict[str, Any]]:
        return [self.space_info(s) for s in self.book.spaces()]

    def users(self, space: str) -> list[dict[str, Any]]:
        state = self._state(space)
        out = []
        for user in sorted(state.users.values(), key=lambda u: u.user_id):
            roles = {
                coll: sorted(timeline[-1][1])
                for (uid, coll), timeline in sorted(state.roles.items())
                if uid == user.user_id and timeline and timeline[-1][1]
            }
            out.append(
                {
                    "user": user.user_id,
                    "label": user.label,
                    "devices": list(user.devices),
                    "roles": roles,
                    "revoked_from": state.revoked.get(user.user_id),
                    "root": user.user_id == state.space.root,
                }
            )
        return out

    def invitation(self, space: str) -> str:
        self._state(space)
        return encode_invitation(space, self.book.entries(space))

    # --- writing the directory ----------------------------------------------------------

    async def _append(self, space: str, ops: Sequence[Mapping[str, Any]]) -> list[Entry]:
        """Sign ``ops`` as directory entries after the current heads and store them."""
        state = self.book.state(space)
        for entry in state.heads if state is not None else ():
            self._hlc.observe(entry.created_at)
        parents: list[Entry] = sorted(state.heads, key=fold_order)[-MAX_PARENTS:] if state else []
        made = []
        for op in ops:
            entry = build_entry(
                author=self.home.user.signing_key,
                space=space,
                collection=DIRECTORY_COLLECTION,
                document=DIRECTORY_DOCUMENT,
                kind=DIRECTORY_KIND,
                payload=encode_op(op),
                created_at=self._hlc.now(),
                parents=parents,
            )
            made.append(entry)
            parents = [entry]
        results = await self.store.put_entries(made)
        for result in results:
            if result.status is PutStatus.REJECTED:
                assert result.error is not None
                raise result.error
        return made

    def _need_admin(self, state: DirectoryState, collection: str = ALL) -> None:
        self._not_relay()
        if not state.is_admin(self.user_id, collection):
            raise ForbiddenError(
                f"this node's user {self.user_id} is not an admin of {collection!r} "
                f"in space {state.space.space}"
            )

    def _not_relay(self) -> None:
        if self.relay:
            raise ForbiddenError(
                "a relay holds no keys, so it administers no space: use a full node"
            )

    async def create_space(self, name: str) -> dict[str, Any]:
        self._not_relay()
        space = make_space_id(name, self.user_id)
        if self.book.state(space) is not None and self._state(space).genesis is not None:
            raise ConflictError(f"space {space} exists already")
        genesis = {"op": "genesis", "name": name, "user": self.record().to_wire()}
        await self._append(space, [genesis])
        await self.rotate_key(space, ALL)
        return self.space_info(space)

    async def add_user(
        self,
        space: str,
        card: str,
        roles: Sequence[str],
        collection: str = ALL,
        label: str | None = None,
    ) -> dict[str, Any]:
        state = self._state(space)
        record = decode_card(card)
        # Adding (or changing) a user is the space admin's; a collection admin may give
        # a listed user roles on its collection.
        known = state.users.get(record.user_id)
        self._need_admin(state, collection if known is not None and label is None else ALL)
        if label is not None:
            record = UserRecord(record.user_id, record.x25519, record.devices, label)
        wanted = _check_roles(roles)
        if record.user_id in state.revoked:
            raise ValidationError(f"user {record.user_id} was revoked; it needs a new identity")
        ops: list[dict[str, Any]] = []
        if state.users.get(record.user_id) != record:
            ops.append({"op": "user", "user": record.to_wire()})
        held = state.roles_now(record.user_id).get(collection, frozenset())
        ops.append(
            {
                "op": "role",
                "user": record.user_id,
                "coll": collection,
                "roles": sorted(held | wanted),
            }
        )
        await self._append(space, ops)
        await self._grant_keys(space, record.user_id)
        return {"user": record.user_id, "invitation": self.invitation(space)}

    async def grant_role(
        self, space: str, user: str, role: str, collection: str = ALL
    ) -> dict[str, Any]:
        state = self._state(space)
        self._need_admin(state, collection)
        wanted = _check_roles([role])
        if user not in state.users:
            raise NotFoundError(f"user {user} is not in space {space}")
        held = state.roles_now(user).get(collection, frozenset())
        op = {"op": "role", "user": user, "coll": collection, "roles": sorted(held | wanted)}
        await self._append(space, [op])
        await self._grant_keys(space, user)
        return {"user": user, "roles": _roles_json(self._state(space), user)}

    async def revoke_role(
        self, space: str, user: str, role: str, collection: str = ALL
    ) -> dict[str, Any]:
        state = self._state(space)
        self._need_admin(state, collection)
        _check_roles([role])
        if user not in state.users:
            raise NotFoundError(f"user {user} is not in space {space}")
        held = state.roles_now(user).get(collection, frozenset())
        op = {"op": "role", "user": user, "coll": collection, "roles": sorted(held - {role})}
        await self._append(space, [op])
        # Every key it holds a grant of and may no longer read rotates.
        state = self._state(space)
        readable = self._readable_scopes(state, user)
        lost = {c for c in _held_scopes(state, user) if ALL not in readable and c not in readable}
        rotated = [await self._rotate(space, scope) for scope in sorted(lost)]
        return {"user": user, "roles": _roles_json(self._state(space), user), "rotated": rotated}

    async def revoke_user(
        self, space: str, user: str, effective_at: int | None = None
    ) -> dict[str, Any]:
        """Revoke ``user`` from ``effective_at`` (an HLC time; default now) on, then
        rotate every key it held a grant of, so nothing written afterwards is
        readable with what it holds."""
        state = self._state(space)
        self._need_admin(state)
        if user not in state.users:
            raise NotFoundError(f"user {user} is not in space {space}")
        if user == state.space.root:
            raise ValidationError("the root of a space cannot be revoked")
        at = self._hlc.now() if effective_at is None else effective_at
        if type(at) is not int or at < 0:
            raise ValidationError("effective_at is an HLC time (a non-negative integer)")
        scopes = _held_scopes(state, user)
        await self._append(space, [{"op": "revoke", "user": user, "from": at}])
        rotated = [await self._rotate(space, scope) for scope in sorted(scopes)]
        return {"user": user, "revoked_from": at, "rotated": rotated}

    async def rotate_key(self, space: str, collection: str = ALL) -> dict[str, Any]:
        state = self._state(space)
        self._need_admin(state, collection)
        return {"key": await self._rotate(space, collection)}

    # --- keys ------------------------------------------------------------------------------

    def _readable_scopes(self, state: DirectoryState, user: str) -> set[str]:
        return {c for c, r in state.roles_now(user).items() if r & READERS}

    async def _rotate(self, space: str, collection: str) -> str:
        """A new version of the key of ``collection``'s scope, granted to its readers."""
        state = self._state(space)
        versions = state.key_versions(collection)
        version = versions[-1].version + 1 if versions else 1
        name = key_name(collection)
        key = NamedKey.generate(make_key_id(space, name, version))
        self.home.keyring.add_named_key(key)
        self.home.keyring.save()
        grants = {
            u.user_id: wrap_key(key, space, u.user_id, u.x25519) for u in state.readers(collection)
        }
        op = {
            "op": "key",
            "kid": key.key_id,
            "name": name,
            "version": version,
            "coll": collection,
            "grants": grants,
        }
        await self._append(space, [op])
        return key.key_id

    async def _grant_keys(self, space: str, user: str) -> None:
        """Wrap to ``user`` every version of the keys of the scopes it may read now,
        making a key of its own for a collection it may read without the space key."""
        state = self._state(space)
        scopes = self._readable_scopes(state, user)
        for scope in sorted(scopes - {ALL}):
            if not state.key_versions(scope):
                await self._rotate(space, scope)
        state = self._state(space)
        record = state.users[user]
        ops = []
        for version in sorted(state.keys.values(), key=lambda k: (k.collection, k.version)):
            if user in version.grants:
                continue
            if ALL not in scopes and version.collection not in scopes:
                continue
            key = self.home.keyring.get_named_key(version.kid)
            if key is None:
                log.warning("cannot grant key %s to %s: this node lacks it", version.kid, user)
                continue
            blob = wrap_key(key, space, user, record.x25519)
            ops.append(_key_op(version, {user: blob}))
        if ops:
            await self._append(space, ops)

    def refresh_keys(self) -> list[str]:
        """Unwrap every key granted to this node's user that the keyring lacks."""
        added: list[str] = []
        if self.relay:
            return added  # a relay takes no key, whatever a directory grants it
        user = self.home.user
        for space in self.book.spaces():
            state = self._state(space)
            for version in state.keys.values():
                blob = version.grants.get(user.user_id)
                if blob is None or self.home.keyring.get_named_key(version.kid) is not None:
                    continue
                try:
                    key = unwrap_key(blob, space, version.kid, user)
                except LoomError as exc:
                    log.warning("space %s: key %s: %s", space, version.kid, exc.message)
                    continue
                self.home.keyring.add_named_key(key)
                added.append(version.kid)
        if added:
            self.home.keyring.save()
        return added

    async def key_for(self, space: str, collection: str) -> NamedKey:
        """The key new entries of ``collection`` in a managed ``space`` use. An admin
        writing to a collection that has no key of its own makes one first, so each
        collection's entries can be shared with that collection's readers alone."""
        state = self._state(space)
        if (
            not self.relay
            and not state.key_versions(collection)
            and state.is_admin(self.user_id, collection)
        ):
            await self._rotate(space, collection)
            state = self._state(space)
        version = state.current_key(collection)
        if version is None:
            raise MissingKeyError(f"no key: space {space} has no key for {collection!r} yet")
        key = self.home.keyring.get_named_key(version.kid)
        if key is None:
            raise MissingKeyError(
                f"no key: this node was not granted key {version.kid!r} of {collection!r}"
            )
        return key

    def check_write(self, space: str, collection: str, at: int) -> None:
        self._state(space).check_writer(self.user_id, collection, at)

    async def join(self, invitation: str) -> dict[str, Any]:
        space, entries = decode_invitation(invitation)
        results = await self.store.put_entries(entries)
        refused = [r for r in results if r.status is PutStatus.REJECTED]
        if refused:
            assert refused[0].error is not None
            raise ValidationError(
                f"the invitation's directory does not verify: {refused[0].error.message}"
            )
        state = self._state(space)
        if not state.roles_now(self.user_id):
            raise NotMemberError(
                f"the invitation to {space} does not list this node's user {self.user_id}"
            )
        self.refresh_keys()
        return self.space_info(space)


def _held_scopes(state: DirectoryState, user: str) -> set[str]:
    """The scopes whose latest key version ``user`` holds (what rotation must replace)."""
    scopes = {k.collection for k in state.keys.values()}
    return {c for c in scopes if user in state.key_versions(c)[-1].grants}


def _key_op(version: KeyVersion, grants: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "op": "key",
        "kid": version.kid,
        "name": version.name,
        "version": version.version,
        "coll": version.collection,
        "grants": dict(grants),
    }


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    found = frozenset(roles)
    bad = sorted(r for r in found if r not in ROLES)
    if bad or not found:
        raise ValidationError(f"roles are some of {', '.join(ROLES)}; got {sorted(found)}")
    return found


def _roles_json(state: DirectoryState, user: str) -> dict[str, list[str]]:
    return {c: sorted(r) for c, r in sorted(state.roles_now(user).items())}


__all__ = [
    "NodeTrust",
    "decode_card",
    "decode_invitation",
    "encode_card",
    "encode_invitation",
]
