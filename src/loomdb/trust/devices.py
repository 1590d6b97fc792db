"""Who a libp2p peer is: the user whose *devices* list its Peer ID, space by space.

A peer on ``/loomdb/sync/1.0.0`` is authenticated by Noise: the handshake proves
it holds the key of its Peer ID. It sends no token. A directory's user record
lists the Peer IDs of that user's devices (a node puts its own in its user's
card, so an invited node is listed), and in a space whose directory lists the
peer as a device of user U the peer acts as U, with U's roles now; in every
other space it is anonymous (open spaces only).

The binding is per space, never global: the admin of space X can write any
devices into X's records, so a peer X lists as a device of U must not act as U
in a space Y whose directory does not say so. A Peer ID listed for two users of
one space binds to neither there (an admin's mistake must not pick one).
Revocation and role changes count at once: the roles are read from the
directory at every check, as for a token's user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loomdb.trust.access import Access
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import DirectoryState
from loomdb.trust.principal import Principal


@dataclass(frozen=True, slots=True)
class PeerPrincipal(Principal):
    """A libp2p peer, by the Peer ID Noise authenticated (``user_id`` is None: which
    user it is depends on the space)."""

    peer_id: str = ""


def device_owner(state: DirectoryState, peer_id: str) -> str | None:
    """The one user of ``state`` that lists ``peer_id`` as a device, else None."""
    owners = [u.user_id for u in state.users.values() if peer_id in u.devices]
    return owners[0] if len(owners) == 1 else None


class DeviceAccess(Access):
    """:class:`~loomdb.trust.access.Access` for a :class:`PeerPrincipal`: in each
    managed space, the roles of the user whose devices list the peer."""

    def __init__(self, book: DirectoryBook, principal: PeerPrincipal, *, open_spaces: bool = True):
        super().__init__(book, principal, open_spaces=open_spaces)
        self.peer_id = principal.peer_id
        # space -> (the state looked at, how much of it was applied, the owner found)
        self._owners: dict[str, tuple[DirectoryState, int, str | None]] = {}

    def user_in(self, space: str) -> str | None:
        """The user the peer acts as in ``space`` (None: anonymous there)."""
        state = self.book.state(space)
        if state is None:
            return None
        cached = self._owners.get(space)
        if cached is not None and cached[0] is state and cached[1] == len(state.applied):
            return cached[2]
        owner = device_owner(state, self.peer_id)
        self._owners[space] = (state, len(state.applied), owner)
        return owner

    def _roles(self, space: str) -> dict[str, frozenset[str]]:
        state = self.book.state(space)
        user = self.user_in(space)
        if state is None or user is None:
            return {}
        return state.roles_now(user)

    def describe(self) -> dict[str, Any]:
        spaces: dict[str, Any] = {}
        users = set()
        for space in self.book.spaces():
            roles = self._roles(space)
            if roles:
                users.add(self.user_in(space))
                spaces[space] = {c: sorted(r) for c, r in roles.items()}
        return {
            "user": users.pop() if len(users) == 1 else None,
            "peer_id": self.peer_id,
            "open_spaces": self.open_spaces,
            "spaces": spaces,
        }


def access_for(book: DirectoryBook, principal: Principal) -> Access:
    """The store server's access policy: by device for a peer, by user otherwise."""
    if isinstance(principal, PeerPrincipal):
        return DeviceAccess(book, principal)
    return Access(book, principal)
