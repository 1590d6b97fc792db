"""The ticket routes of the p2p API (:mod:`loomdb.api.p2p` lists them in its table):
``POST /api/v0/p2p/ticket`` gives one, ``POST /api/v0/p2p/connect {"ticket"}``
uses one. Thin over :mod:`loomdb.node.ticket`; each handler gets ``app.state``
(it needs the host and the node's trust, which a relay lacks)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from loomdb.api.validation import Schema, read_json, require_json
from loomdb.node.ticket import TICKET_PREFIX, Invite, connect_ticket, issue_ticket
from loomdb.trust.directory import ROLES
from loomdb.trust.spaces import ALL

_TEXT: Schema = {"type": "string", "minLength": 1}
TICKET: Schema = {
    "type": "object",
    "properties": {
        "space": {
            **_TEXT,
            "description": "the space it is to (a hint; with invite: its)",
        },
        "invite": {
            "type": "object",
            "description": "add this user to the space; the ticket carries its invitation",
            "properties": {
                "card": {**_TEXT, "description": "the user's card (loomdb-user1:…)"},
                "roles": {"type": "array", "items": {"type": "string", "enum": list(ROLES)}},
                "collection": {**_TEXT, "default": ALL},
                "label": {"type": "string"},
            },
            "required": ["card", "roles"],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
TICKET_FIELD: Schema = {**_TEXT, "description": f"{TICKET_PREFIX}… (instead of addr)"}


async def read_body(request: Request, schema: Schema, limit: int) -> Any:
    """The JSON body of a p2p route; an absent one reads as ``{}`` when ``schema``
    requires no field (``POST /p2p/ticket`` with no options), as on the trust routes.
    Sent as JSON even then: a page's bodiless POST is a "simple" one."""
    declared = request.headers.get("content-length")
    absent = declared == "0" or (declared is None and "transfer-encoding" not in request.headers)
    if absent and not schema.get("required"):
        await require_json(request, limit)
        return {}
    return await read_json(request, limit)


async def p2p_ticket(state: Any, body: Any) -> Any:
    invite = body.get("invite")
    return await issue_ticket(
        state.p2p,
        getattr(state, "trust", None),
        body.get("space"),
        None
        if invite is None
        else Invite(
            invite["card"],
            tuple(invite["roles"]),
            invite.get("collection", ALL),
            invite.get("label"),
        ),
    )


async def p2p_connect_ticket(state: Any, text: str) -> Any:
    return await connect_ticket(state.p2p, getattr(state, "trust", None), text)
