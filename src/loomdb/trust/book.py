"""``DirectoryBook``: the directories of every managed space a node holds.

The book is loaded from the node's store and kept current by the guarded store
(:mod:`loomdb.trust.guard`), which hands it every directory entry it stores.
Entries that only append to a directory (they sort after the rest and revoke
nobody) are applied to its state; any other change refolds the space. Either
way the state is the pure function of the stored entries that
:func:`~loomdb.trust.directory.fold` defines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry
from loomdb.errors import NotMemberError, RevokedError, ValidationError
from loomdb.stores.base import ContentAddressedStore
from loomdb.trust.directory import DirectoryState, decode_op, fold, fold_order
from loomdb.trust.spaces import DIRECTORY_COLLECTION, DIRECTORY_DOCUMENT, parse_space_id

log = logging.getLogger("loomdb.trust")


class DirectoryBook:
    """Directory states by space id, plus the checks every node runs on receive."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[CID, Entry]] = {}
        self._states: dict[str, DirectoryState] = {}

    async def load(self, store: ContentAddressedStore) -> None:
        """Read every managed space's directory entries from ``store``."""
        for space in await store.list_spaces():
            try:
                managed = parse_space_id(space)
            except ValidationError:
                continue
            if managed is None:
                continue
            metas = await store.list_entries(space, DIRECTORY_COLLECTION, DIRECTORY_DOCUMENT)
            found = await store.get_entries([m.cid for m in metas])
            self.add([e for e in found if e is not None])

    # --- reading -----------------------------------------------------------------------

    def spaces(self) -> list[str]:
        """Managed spaces with a genesis entry, sorted."""
        return sorted(s for s, st in self._states.items() if st.genesis is not None)

    def state(self, space: str) -> DirectoryState | None:
        """The directory of ``space`` (None: open space, or none held)."""
        return self._states.get(space)

    def entries(self, space: str) -> list[Entry]:
        return list(self._entries.get(space, {}).values())

    def scratch(self, space: str) -> DirectoryState:
        """A state to check a batch against: the current one, or an empty one
        (it accepts only the genesis). :class:`ValidationError` for a bad id."""
        managed = parse_space_id(space)
        if managed is None:
            raise ValidationError(f"{space!r} is an open space: it has no directory")
        state = self._states.get(space)
        return DirectoryState(managed) if state is None else state.copy()

    def check_member(self, user_id: str) -> None:
        """A :data:`~loomdb.trust.principal.MemberCheck`: may ``user_id`` authenticate
        here? It must be a current member of at least one space."""
        revoked = False
        for state in self._states.values():
            try:
                state.check_member(user_id)
                return
            except RevokedError:
                revoked = True
            except NotMemberError:
                pass
        if revoked:
            raise RevokedError(f"user {user_id} was revoked")
        raise NotMemberError(f"user {user_id} is not a member of any space this node holds")

    def describe(self, user_id: str | None) -> dict[str, Any]:
        """What ``user_id`` may reach, per space: ``{"*": roles, coll: roles}``."""
        out: dict[str, Any] = {}
        if user_id is None:
            return out
        for space, state in self._states.items():
            roles = state.roles_now(user_id)
            if roles:
                out[space] = {c: sorted(r) for c, r in roles.items()}
        return out

    # --- changing ------------------------------------------------------------------------

    def appends_only(self, entries: Iterable[Entry]) -> bool:
        """Do ``entries`` only append to their spaces' directories (each sorts after
        what the state was folded from, and none revokes anybody)? Then applying
        them one by one gives what a fold of everything would."""
        by_space: dict[str, list[Entry]] = {}
        for entry in entries:
            by_space.setdefault(entry.space, []).append(entry)
        for space, new in by_space.items():
            state = self._states.get(space)
            if state is None or not self._appends(state, new):
                return False
        return True

    @staticmethod
    def _appends(state: DirectoryState, new: list[Entry]) -> bool:
        return all(_after(state, e) and not _revokes(e) for e in new)

    def add(self, entries: Iterable[Entry]) -> None:
        """Take stored directory entries in and refold the spaces they touch."""
        fresh: dict[str, list[Entry]] = {}
        for entry in entries:
            held = self._entries.setdefault(entry.space, {})
            if entry.cid not in held:
                held[entry.cid] = entry
                fresh.setdefault(entry.space, []).append(entry)
        for space, new in fresh.items():
            managed = parse_space_id(space)
            assert managed is not None
            state = self._states.get(space)
            new.sort(key=fold_order)
            if state is not None and self._appends(state, new):
                # The usual case, entries appended after the heads: apply them in order
                # (the same result as a refold, which sorts them after the rest).
                for entry in new:
                    state.apply(entry)
                parents = {p for e in new for p in e.parents}
                state.heads = [e for e in [*state.heads, *new] if e.cid not in parents]
            else:
                state = fold(managed, self._entries[space].values())
            self._states[space] = state
            for entry in new:  # what the fold ignores of what just arrived
                if entry.cid in state.ignored:
                    reason = state.ignored[entry.cid]
                    log.debug(
                        "space %s: directory entry %s does not count: %s", space, entry.cid, reason
                    )


def _after(state: DirectoryState, entry: Entry) -> bool:
    """Does ``entry`` sort after every entry ``state`` was folded from? (Then applying
    it to the state equals folding everything again.)"""
    last = state.last_order
    return last is None or fold_order(entry) > last


def _revokes(entry: Entry) -> bool:
    """Is ``entry`` a revocation? (One may reach back before entries already folded.)"""
    try:
        return decode_op(entry.payload).get("op") == "revoke"
    except ValidationError:
        return False
