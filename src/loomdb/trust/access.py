"""``Access``: what one principal may reach through a node's store server.

* **Open spaces** (no ``~`` in the id): everybody, anonymous included, unless
  the node was told to take managed spaces only.
* **Managed spaces**: members only, by their roles now (a revoked user has none):
  pulling a collection (reconcile, get, list) needs ``read``, ``admin`` or
  ``relay`` on it or on ``*``; a whole-space set needs one of them on ``*``.
  The directory (``$directory``) is readable by every member. Pushing needs
  any role on the entry's collection (or ``*``); the guarded store behind
  then checks each entry's *author*, so a member may forward what others wrote.
"""

from __future__ import annotations

from typing import Any

from loomdb.stores.base import SetKey
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import PULLERS
from loomdb.trust.principal import Principal
from loomdb.trust.spaces import ALL, DIRECTORY_COLLECTION, is_managed


class Access:
    """The reach of ``principal`` given the directories in ``book``."""

    def __init__(self, book: DirectoryBook, principal: Principal, *, open_spaces: bool = True):
        self.book = book
        self.principal = principal
        self.open_spaces = open_spaces

    def _roles(self, space: str) -> dict[str, frozenset[str]]:
        state = self.book.state(space)
        user = self.principal.user_id
        if state is None or user is None:
            return {}
        return state.roles_now(user)

    def can_pull(self, space: str, collection: str | None = None) -> bool:
        """May the principal pull ``collection`` of ``space`` (None: the whole space)?"""
        if not is_managed(space):
            return self.open_spaces
        roles = self._roles(space)
        if not roles:
            return False
        if collection == DIRECTORY_COLLECTION:
            return True
        if roles.get(ALL, frozenset()) & PULLERS:
            return True
        return collection is not None and bool(roles.get(collection, frozenset()) & PULLERS)

    def can_push(self, space: str, collection: str) -> bool:
        if not is_managed(space):
            return self.open_spaces
        roles = self._roles(space)
        if collection == DIRECTORY_COLLECTION:
            return bool(roles)
        return bool(roles.get(ALL)) or bool(roles.get(collection))

    def can_pull_set(self, key: SetKey) -> bool:
        return self.can_pull(key.space, key.collection)

    def sees_space(self, space: str) -> bool:
        """Listed in ``spaces``: pullable whole or in part."""
        if not is_managed(space):
            return self.open_spaces
        return bool(self._roles(space))

    def describe(self) -> dict[str, Any]:
        """The ``access`` reply: the user and, per managed space, its roles by scope."""
        return {
            "user": self.principal.user_id,
            "open_spaces": self.open_spaces,
            "spaces": self.book.describe(self.principal.user_id),
        }
