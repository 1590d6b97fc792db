"""The HTTP API of the node's libp2p host: ``/api/v0/p2p/…``.

Thin routes over the :class:`~loomdb.transports.libp2p.P2PHost` the daemon puts on
``app.state.p2p``; a node started with ``--no-p2p`` answers 404
``route.not_found`` here. :data:`P2P_ENDPOINTS` is the one table of these routes
(in OpenAPI too). Like every control route they need the node's admin token
(:mod:`loomdb.api.guard`); bodies are JSON, checked against their schema (400).

A peer that cannot be reached is 502 with the transport's code
(``transport.unreachable``): the failing link is the peer's, not this API's.

An endpoint's handler is given the ``app.state`` attribute its ``service`` names
(the host by default; ``replicators``: the node's
:class:`~loomdb.replication.replicators.Replicators`; ``state``: ``app.state`` itself,
for the ticket routes of :mod:`loomdb.api.tickets`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from loomdb.api.errors import INVALID_REQUEST, ROUTE_NOT_FOUND, RequestError
from loomdb.api.routes import PREFIX
from loomdb.api.tickets import TICKET, TICKET_FIELD, p2p_connect_ticket, p2p_ticket, read_body
from loomdb.api.validation import Schema, check, parse_query
from loomdb.errors import TransportError

if TYPE_CHECKING:
    from loomdb.replication.passive import PassiveReplication
    from loomdb.replication.replicators import Replicators
    from loomdb.transports.libp2p import P2PHost

MAX_P2P_BODY_BYTES: Final = 16 * 1024
UNREACHABLE_STATUS: Final = 502


@dataclass(frozen=True, slots=True)
class P2PEndpoint:
    method: str
    path: str
    handler: Callable[[Any, Any], Awaitable[Any]]  # (the service, the body)
    summary: str
    status: int = 200
    body: Schema | None = None
    errors: tuple[int, ...] = ()
    service: str = "p2p"  # the app.state attribute handed to the handler


_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 1024}
CONNECT = {
    "type": "object",
    "properties": {
        "addr": {**_TEXT, "description": "/ip4/HOST/tcp/PORT/p2p/12D3KooW…"},
        "ticket": TICKET_FIELD,
    },
    "additionalProperties": False,
}
DISCONNECT = {
    "type": "object",
    "properties": {"peer": {**_TEXT, "description": "the peer's Peer ID, 12D3KooW…"}},
    "required": ["peer"],
    "additionalProperties": False,
}


async def p2p_info(p2p: P2PHost, body: Any) -> Any:
    return p2p.info()


# --- replicators ---------------------------------------------------------------------

_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
SET_REPLICATOR = {
    "type": "object",
    "properties": {
        "addr": {**_TEXT, "description": "the target: /ip4/HOST/tcp/PORT/p2p/12D3KooW…"},
        "space": {**_NAME, "description": "default: the node's space"},
        "collections": {"type": "array", "items": _NAME, "maxItems": 1000},
        "documents": {
            "type": "array",
            "items": {"type": "array", "items": _NAME, "minItems": 2, "maxItems": 2},
            "maxItems": 1000,
            "description": "[collection, document] pairs",
        },
    },
    "required": ["addr"],
    "additionalProperties": False,
}
DELETE_REPLICATOR = {
    "type": "object",
    "properties": {
        "peer": {**_TEXT, "description": "the target's Peer ID, 12D3KooW…"},
        "space": {**_NAME, "description": "only its replicator of this space"},
    },
    "required": ["peer"],
    "additionalProperties": False,
}


async def p2p_replicators(replicators: Replicators, body: Any) -> Any:
    return {"replicators": replicators.list()}


async def p2p_replicator_set(replicators: Replicators, body: Any) -> Any:
    documents = [(c, d) for c, d in body.get("documents", ())]
    return replicators.set(body["addr"], body.get("space"), body.get("collections", ()), documents)


async def p2p_replicator_delete(replicators: Replicators, body: Any) -> Any:
    return {"deleted": replicators.delete(body["peer"], body.get("space"))}


async def p2p_peers(p2p: P2PHost, body: Any) -> Any:
    return {"peers": p2p.peers()}


async def p2p_connect(state: Any, body: Any) -> Any:
    if ("addr" in body) == ("ticket" in body):
        raise RequestError(400, INVALID_REQUEST, "body: give 'addr' or 'ticket', one of them")
    try:
        if "ticket" in body:
            return await p2p_connect_ticket(state, body["ticket"])
        peer = await state.p2p.connect(body["addr"])
    except TransportError as exc:
        raise RequestError(UNREACHABLE_STATUS, exc.code, exc.message) from None
    return {"peer_id": peer, "connected": True}


async def p2p_disconnect(p2p: P2PHost, body: Any) -> Any:
    return {"peer_id": body["peer"], "disconnected": await p2p.disconnect(body["peer"])}


# --- subscriptions (gossip) -----------------------------------------------------------

_NAMES: Schema = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000}
_SPACE: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
COLLECTIONS = {
    "type": "object",
    "properties": {
        "collections": {**_NAMES, "description": "collection names; one bad, none changed"},
        "space": {**_SPACE, "description": "default: the node's space"},
    },
    "required": ["collections"],
    "additionalProperties": False,
}
DOCUMENTS = {
    "type": "object",
    "properties": {
        "documents": {**_NAMES, "description": "COLLECTION/DOCUMENT names; one bad, none changed"},
        "space": {**_SPACE, "description": "default: the node's space"},
    },
    "required": ["documents"],
    "additionalProperties": False,
}


async def p2p_collections(replication: PassiveReplication, body: Any) -> Any:
    return {"collections": replication.subscriptions.listing()["collections"]}


async def p2p_collections_add(replication: PassiveReplication, body: Any) -> Any:
    space = body.get("space") or replication.default_space
    added = replication.subscriptions.add_collections(space, body["collections"])
    replication.subscriptions_changed()
    return {"added": [{"space": s, "collection": c} for s, c in added]}


async def p2p_collections_remove(replication: PassiveReplication, body: Any) -> Any:
    space = body.get("space") or replication.default_space
    removed = replication.subscriptions.remove_collections(space, body["collections"])
    replication.subscriptions_changed()
    return {"removed": [{"space": s, "collection": c} for s, c in removed]}


async def p2p_documents(replication: PassiveReplication, body: Any) -> Any:
    return {"documents": replication.subscriptions.listing()["documents"]}


async def p2p_documents_add(replication: PassiveReplication, body: Any) -> Any:
    space = body.get("space") or replication.default_space
    added = replication.subscriptions.add_documents(space, body["documents"])
    replication.subscriptions_changed()
    return {"added": [{"space": s, "collection": c, "document": d} for s, c, d in added]}


async def p2p_documents_remove(replication: PassiveReplication, body: Any) -> Any:
    space = body.get("space") or replication.default_space
    removed = replication.subscriptions.remove_documents(space, body["documents"])
    replication.subscriptions_changed()
    return {"removed": [{"space": s, "collection": c, "document": d} for s, c, d in removed]}


async def p2p_documents_sync(replication: PassiveReplication, body: Any) -> Any:
    space = body.get("space") or replication.default_space
    return {"peers": await replication.sync_documents(space, body["documents"])}


def _subscription_endpoints(p2p: str) -> tuple[P2PEndpoint, ...]:
    def endpoint(method: str, path: str, handler: Any, summary: str, **kw: Any) -> P2PEndpoint:
        return P2PEndpoint(method, f"{p2p}{path}", handler, summary, service="replication", **kw)

    return (
        endpoint("GET", "/collections", p2p_collections, "The collections followed by gossip"),
        endpoint(
            "POST",
            "/collections",
            p2p_collections_add,
            "Follow collections: receive their documents' updates, new documents too",
            body=COLLECTIONS,
            errors=(422,),
        ),
        endpoint(
            "DELETE",
            "/collections",
            p2p_collections_remove,
            "Stop following collections",
            body=COLLECTIONS,
            errors=(422,),
        ),
        endpoint("GET", "/documents", p2p_documents, "The documents followed by gossip"),
        endpoint(
            "POST",
            "/documents",
            p2p_documents_add,
            "Follow documents (COLLECTION/DOCUMENT): receive their updates",
            body=DOCUMENTS,
            errors=(422,),
        ),
        endpoint(
            "DELETE",
            "/documents",
            p2p_documents_remove,
            "Stop following documents",
            body=DOCUMENTS,
            errors=(422,),
        ),
        endpoint(
            "POST",
            "/documents/sync",
            p2p_documents_sync,
            "Pull the named documents from every connected peer, once; what none of them"
            " has, from providers found on the DHT",
            body=DOCUMENTS,
            errors=(422,),
        ),
    )


_P2P = f"{PREFIX}/p2p"

P2P_ENDPOINTS: tuple[P2PEndpoint, ...] = (
    P2PEndpoint(
        "GET",
        f"{_P2P}/info",
        p2p_info,
        "This node's libp2p host: Peer ID, listen addresses, peers, counters",
    ),
    P2PEndpoint("GET", f"{_P2P}/peers", p2p_peers, "Connected peers"),
    P2PEndpoint(
        "POST",
        f"{_P2P}/connect",
        p2p_connect,
        "Dial a peer by its multiaddr (Noise proves it is that Peer ID), or by a ticket:"
        " its addresses in order, then join the space of its invitation",
        body=CONNECT,
        errors=(403, 422, 502),
        service="state",
    ),
    P2PEndpoint(
        "POST",
        f"{_P2P}/ticket",
        p2p_ticket,
        "A ticket to this node (loomdb-ticket1:…): Peer ID, dialable addresses, optionally a"
        " space and an invitation to it (the user given is added first)",
        body=TICKET,
        errors=(403, 404, 422),
        service="state",
    ),
    P2PEndpoint(
        "POST",
        f"{_P2P}/disconnect",
        p2p_disconnect,
        "Close every connection to a peer",
        body=DISCONNECT,
        errors=(422,),
    ),
    P2PEndpoint(
        "GET",
        f"{_P2P}/replicators",
        p2p_replicators,
        "The replicators: target, scope, state, lag, cursor, last error, next retry",
        service="replicators",
    ),
    P2PEndpoint(
        "POST",
        f"{_P2P}/replicators",
        p2p_replicator_set,
        "Push a space (or collections, documents) to a peer: backfill, then each new local"
        " entry; replaces the scope of the peer's replicator of that space",
        body=SET_REPLICATOR,
        errors=(422,),
        service="replicators",
    ),
    P2PEndpoint(
        "DELETE",
        f"{_P2P}/replicators",
        p2p_replicator_delete,
        "Stop and forget the replicators to a peer (of one space, if given)",
        body=DELETE_REPLICATOR,
        errors=(404, 422),
        service="replicators",
    ),
    *_subscription_endpoints(_P2P),
)


def p2p_routes() -> list[BaseRoute]:
    """Starlette routes for :data:`P2P_ENDPOINTS`, serving ``request.app.state.p2p``."""
    by_path: dict[str, dict[str, P2PEndpoint]] = {}
    for endpoint in P2P_ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    return [
        Route(path, _serve(methods), methods=list(methods), name=f"p2p:{path}")
        for path, methods in by_path.items()
    ]


def _serve(methods: Mapping[str, P2PEndpoint]) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = methods["GET" if request.method == "HEAD" else request.method]
        p2p = getattr(request.app.state, "p2p", None)
        if p2p is None:
            raise RequestError(
                404, ROUTE_NOT_FOUND, f"{request.url.path}: this node runs without libp2p"
            )
        parse_query(request.query_params.multi_items(), {})
        body = None
        if endpoint.body is not None:
            body = await read_body(request, endpoint.body, MAX_P2P_BODY_BYTES)
            check(endpoint.body, body)
        state = request.app.state  # service "p2p": state.p2p, the host
        service = state if endpoint.service == "state" else getattr(state, endpoint.service)
        result = await endpoint.handler(service, body)
        if endpoint.handler is p2p_info:
            replicators = getattr(request.app.state, "replicators", None)
            if replicators is not None:
                result["replicators"] = replicators.summary()
            replication = getattr(request.app.state, "replication", None)
            if replication is not None:
                result["replication"] = replication.info()
            mdns = getattr(request.app.state, "mdns", None)
            result["mdns"] = {"enabled": False} if mdns is None else mdns.info()
            providers = getattr(request.app.state, "dht", None)  # None: --no-dht
            result["dht"] = None if providers is None else providers.dht.info(providers.info)
        return JSONResponse(result, status_code=endpoint.status)

    return serve
