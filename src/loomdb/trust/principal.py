"""Who is asking: the principal of a request on a transport.

A request that carries a valid token acts as that token's user; one without a
token is anonymous. The store server decides what each may see and do
(:mod:`loomdb.trust.access`); anonymous principals reach only open spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Principal:
    """``user_id`` is a ``z6Mk…`` user id, or None for an anonymous request."""

    user_id: str | None
    token_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS: Final = Principal(None)

MemberCheck = Callable[[str], None]
"""Raises :class:`~loomdb.errors.NotMemberError` or :class:`~loomdb.errors.RevokedError`
when ``user_id`` may not authenticate now (not in any directory this node holds, or
revoked); returns None when it may."""
