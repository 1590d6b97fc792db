"""The node daemon: one trio process that serves the HTTP API over the node's database.

It runs on trio because libp2p (to come, in this same process) is trio-only.

Lifecycle:

1. bind the API socket first, so a busy port is refused (``AddressInUseError``)
   before anything is opened;
2. lock the node's home (:mod:`loomdb.node.lock`: a second node on it is
   refused with ``HomeInUseError``) and open the database on it;
3. serve the API with Hypercorn — over HTTPS (and WSS) when given TLS files,
   with the sync endpoint when given a sync handler; once it accepts
   connections, print one line on stdout (:data:`READY`) with the node's Peer
   ID and the API's URL (``https://`` with TLS) — with port 0 the URL holds the
   port the system chose — and, when libp2p runs (:mod:`loomdb.node.p2p`), the
   multiaddrs its host listens on;
4. on SIGINT or SIGTERM: stop accepting, let requests in flight finish (at most
   :data:`GRACE_SECONDS`), close the database, return (the CLI exits 0).

Writes are acknowledged only once the store committed them, so a SIGKILL loses
nothing that a client was told is written.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from libp2p.peer.id import ID

from loomdb.api import create_app
from loomdb.api.auth import auth_routes
from loomdb.api.guard import GuardPolicy, LocalGuard, allowed_hosts
from loomdb.api.p2p import p2p_routes
from loomdb.api.sync import fixed
from loomdb.api.sync_run import remote_connector, sync_run_route
from loomdb.api.trust import trust_routes
from loomdb.documents import Database
from loomdb.documents.database import DEFAULT_SPACE
from loomdb.errors import AddressInUseError, LoomError, ValidationError
from loomdb.node.addrs import record_addrs
from loomdb.node.databases import NodeDatabases
from loomdb.node.home import NodeHome
from loomdb.node.lock import HomeLock
from loomdb.node.p2p import P2PSettings, p2p_connector, passive_replication, ready_suffix
from loomdb.node.runtime import admin_token, register
from loomdb.replication.feed import EntryFeed
from loomdb.replication.replicator_state import RetrySchedule
from loomdb.replication.replicators import Replicators
from loomdb.stores.caching import CachingStore
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.transports.base import DEFAULT_MAX_FRAME, FrameHandler
from loomdb.transports.libp2p import P2PHost, parse_peer_addr
from loomdb.transports.libp2p.dht import NodeDHT
from loomdb.transports.libp2p.mdns import MdnsDiscovery, host_hooks
from loomdb.transports.tls import TlsFiles, Verify
from loomdb.trust.admin import NodeTrust
from loomdb.trust.auth import AuthService
from loomdb.trust.book import DirectoryBook
from loomdb.trust.devices import PeerPrincipal, access_for
from loomdb.trust.guard import GuardedStore
from loomdb.trust.principal import Principal

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9181
GRACE_SECONDS = 5.0
PEER_CHECK_SECONDS = 1.0  # how often a failing replicator's peer is looked for
READY = "loomdb: node {peer_id} ready, API at {url}"

log = logging.getLogger(__name__)

SyncHandlerFactory = Callable[[Database], FrameHandler]
"""Makes the node's sync handler once its database is open (e.g. a store server)."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How the node serves: TLS, frame limit, and its role.

    A full node (the default) opens its database and serves the API and sync
    over it. A relay (``relay=True``) holds no keys and no database: it stores
    and forwards signed entries (``SQLiteStore``), or with an ``upstream``
    forwards every request to that node (a passthrough hop), keeping a copy
    when ``cache`` is set."""

    tls: TlsFiles | None = None
    sync_handler: SyncHandlerFactory | None = None  # overrides the store server (tests)
    max_frame: int = DEFAULT_MAX_FRAME
    relay: bool = False
    upstream: str | None = None
    cache: bool = False
    upstream_transport: str = "ws"
    upstream_verify: Verify = True
    space: str = DEFAULT_SPACE
    allow_hosts: tuple[str, ...] = ()  # names the API answers to besides loopback
    p2p: P2PSettings | None = None  # None: no libp2p host
    replicator_retry: RetrySchedule | None = None  # None: the default back-off


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → ``(host, port)``; port 0 means any free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValidationError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9181")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``; a busy or unusable address is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(
                f"cannot listen on {where}: the address is in use (another node?); "
                "choose another with --api HOST:PORT"
            ) from None
        raise ValidationError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def run_daemon(
    home_path: str | os.PathLike[str],
    api_host: str = DEFAULT_API_HOST,
    api_port: int = DEFAULT_API_PORT,
    *,
    announce: Callable[[str], None] | None = None,
    tls: TlsFiles | None = None,
    sync_handler: SyncHandlerFactory | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    relay: bool = False,
    upstream: str | None = None,
    cache: bool = False,
    upstream_transport: str = "ws",
    upstream_verify: Verify = True,
    space: str = DEFAULT_SPACE,
    allow_hosts: tuple[str, ...] = (),
    p2p: P2PSettings | None = None,
    replicator_retry: RetrySchedule | None = None,
) -> None:
    """Run a node until SIGINT or SIGTERM. Raises LoomError for a bad home or port,
    or TLS files that do not load.

    ``announce`` gets the ready line (default: print it on stdout, flushed).
    ``tls``: serve HTTPS and WSS with this certificate and key. ``sync_handler``:
    called with the open database, its handler serves ``/api/v0/sync`` (frames of
    at most ``max_frame`` bytes). ``p2p``: run a libp2p host too (default: none),
    and the node's replicators, retried after ``replicator_retry``'s delays."""
    announce = announce or partial(print, flush=True)
    if (upstream or cache) and not relay:
        raise ValidationError("--upstream and --cache are for a relay: add --relay")
    if cache and not upstream:
        raise ValidationError("--cache keeps copies of an upstream's entries: add --upstream URL")
    if relay and space != DEFAULT_SPACE:
        raise ValidationError("a relay serves every space it is given: drop --space")
    options = ServeOptions(
        tls,
        sync_handler,
        max_frame,
        relay,
        upstream,
        cache,
        upstream_transport,
        upstream_verify,
        space,
        tuple(allow_hosts),
        p2p,
        replicator_retry,
    )
    sock = listen_socket(api_host, api_port)  # first: a busy port creates nothing
    try:
        if p2p is not None:
            p2p.check()  # a busy p2p port too
        if tls is not None:
            tls.server_context()  # unreadable files: a clear error before anything opens
        with HomeLock(home_path, "loomdb start"):  # held while the node runs
            home = NodeHome.open(home_path, relay=relay)
            trio.run(serve_node, home, sock, announce, options)
    finally:
        if sock.fileno() != -1:  # not handed over to the server
            sock.close()


async def serve_node(
    home: NodeHome,
    sock: socket.socket,
    announce: Callable[[str], None],
    options: ServeOptions | None = None,
) -> None:
    """Serve the API on ``sock`` (bound, not yet listening) until a signal arrives."""
    options = options or ServeOptions()
    # Opened first: a signal during start-up still stops the node in order.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with AsyncExitStack() as stack:
            if options.relay:
                base = await stack.enter_async_context(_relay_store(home, options))
            else:
                base = home.open_store()
                stack.push_async_callback(base.aclose)
            book = DirectoryBook()
            try:
                await book.load(base)
            except LoomError as exc:  # a passthrough whose upstream is down: learn as we go
                log.warning("cannot read the spaces' directories yet: %s", exc.message)
            # Every entry the node stores (written here or received) wakes the
            # followers of its receipt log: gossip, replicators.
            feed = EntryFeed(base, home.user.signing_key.public_key)
            await feed.start()
            guarded = GuardedStore(base, book, on_stored=feed.stored, on_written=feed.written)
            trust = NodeTrust(home, guarded, book, relay=options.relay)
            databases: NodeDatabases | None = None
            local: Any = guarded
            space = None
            if not options.relay:
                databases = NodeDatabases(home, guarded, trust, options.space)
                stack.push_async_callback(databases.aclose)
                await databases.start()
                local, space = databases, options.space
            db = None if databases is None else databases.default
            auth = AuthService(home.keyring.node_key, book.check_member)
            server = StoreServer(
                local,
                max_frame=options.max_frame,
                relay=options.relay,
                access=lambda principal: access_for(book, principal),
                peer_id=home.peer_id,
            )
            handler_for: Callable[[Principal], FrameHandler] = server.handler_for
            if options.sync_handler is not None and db is not None:
                handler_for = fixed(options.sync_handler(db))
            p2p = None
            mdns: MdnsDiscovery | None = None
            replicators = None
            replication = None
            if options.p2p is not None:
                p2p = P2PHost(
                    home.keyring.node_key,
                    options.p2p.listen,
                    bootstrap=options.p2p.peers,
                    max_frame=options.max_frame,
                    nat=options.p2p.nat,
                )
                sync_for = handler_for
                p2p.serve_sync(lambda peer: sync_for(PeerPrincipal(None, peer_id=peer)))
                await stack.enter_async_context(p2p.run())
                stack.callback(record_addrs(home.path, p2p.listen_addrs()))
                if options.p2p.mdns:  # stopped before the host
                    mdns = MdnsDiscovery(host_hooks(p2p), options.p2p.listen)
                    await stack.enter_async_context(mdns.run())
                dht = None
                if options.p2p.dht:  # Kad-DHT: providers of what nodes hold
                    dht = NodeDHT(p2p.host, server=options.p2p.dht_server, hands_off=p2p.hands_off)
                    await stack.enter_async_context(dht.run())
                # Gossip and head exchange (stopped before the host, like the replicators).
                replication = await stack.enter_async_context(
                    passive_replication(
                        home.path,
                        p2p,
                        local,
                        feed=feed,
                        check=guarded.check,
                        settings=options.p2p,
                        default_space=options.space,
                        dht=dht,
                    )
                )
                # Stopped before the host (the stack unwinds in reverse), cursors saved.
                replicators = Replicators(
                    home.path,
                    base,
                    feed,
                    _peer_store(p2p),
                    peer_of=lambda addr: str(parse_peer_addr(addr).peer_id),
                    own_peer=home.peer_id,
                    default_space=options.space,
                    schedule=options.replicator_retry,
                    reconnected=_reconnected(p2p),
                )
                await stack.enter_async_context(replicators.run())
            bound_host = sock.getsockname()[0]
            config = Config()
            config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns the socket from here
            config.graceful_timeout = GRACE_SECONDS
            config.errorlog = logging.getLogger("loomdb.http")
            access = logging.getLogger("loomdb.http.access")
            # Hypercorn builds each request's log line (~1 ms under load) whenever it has
            # a logger, shown or not: give it one only when the line would be shown (-v).
            config.accesslog = access if access.isEnabledFor(logging.INFO) else None
            # Hypercorn refuses (close 1009) a WebSocket message over this before
            # the app sees it, so it never buffers more than a frame.
            config.websocket_max_message_size = options.max_frame
            if options.tls is not None:
                config.certfile = str(options.tls.cert)
                config.keyfile = str(options.tls.key)

            connector = p2p_connector(p2p, remote_connector(home.user, options.max_frame))
            api = create_app(
                db,
                sync_handler_for=handler_for,
                auth=auth,
                max_frame=options.max_frame,
                databases=databases,
                extra_routes=[
                    sync_run_route(local, space, connector),
                    *auth_routes(auth),
                    *trust_routes(),
                    *p2p_routes(),
                ],
            )
            api.state.trust = trust
            api.state.p2p = p2p
            api.state.feed = feed
            api.state.replicators = replicators
            api.state.replication = replication
            api.state.mdns = mdns
            api.state.dht = None if replication is None else replication.providers
            policy = GuardPolicy(
                allowed_hosts(bound_host, options.allow_hosts), admin_token(home.path)
            )
            # Starlette's ASGI types are looser than Hypercorn's; the app is ASGI 3.
            app = cast(ASGIFramework, LocalGuard(api, policy))
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
                role = " (relay)" if options.relay else ""
                registration = register(binds[0], policy.admin_token or "", home.path)
                try:
                    ready = READY.format(peer_id=home.peer_id, url=binds[0]) + role
                    announce(ready + ready_suffix(p2p))
                    async for signum in signals:
                        log.info("%s: stopping", signal.Signals(signum).name)
                        break
                    stop.set()
                finally:
                    if registration is not None:
                        registration.remove()
    log.info("stopped")


def _peer_store(p2p: P2PHost) -> Callable[[str], Any]:
    """A replicator's connection to its peer: the host's one stream to that peer."""

    @asynccontextmanager
    async def connect(addr: str) -> AsyncIterator[RemoteStore]:
        # After a failed dial py-libp2p refuses to dial that peer again for 60 s (its
        # swarm's "negative cache"), whatever the replicator's back-off says: a
        # target back after 5 s would wait a minute. The schedule decides: lift it.
        network: Any = p2p.host.get_network()
        network.unblock_peer(parse_peer_addr(addr).peer_id)
        async with RemoteStore(p2p.peer_channel(addr), retries=1) as remote:
            yield remote

    return connect


def _reconnected(p2p: P2PHost) -> Callable[[str], Awaitable[None]]:
    """Returns once the host is connected to the peer again after being away (looked
    at every :data:`PEER_CHECK_SECONDS`): it dialled us, or we dialled it."""

    async def reconnected(peer: str) -> None:
        network = p2p.host.get_network()
        peer_id = ID.from_base58(peer)
        away = False
        while True:
            up = peer_id in network.connections
            if up and away:
                return
            away = away or not up
            await trio.sleep(PEER_CHECK_SECONDS)

    return reconnected


@asynccontextmanager
async def _relay_store(home: NodeHome, options: ServeOptions) -> AsyncIterator[Any]:
    """The store a relay serves: its own, a proxy to its upstream, or both (a cache)."""
    if options.upstream is None:
        store = home.open_store()
        try:
            yield store
        finally:
            await store.aclose()
        return
    upstream = RemoteStore.connect(
        options.upstream,
        transport=options.upstream_transport,
        verify=options.upstream_verify,
        max_frame=options.max_frame,
        identity=home.user,  # signs in upstream as the relay's user
    )
    if not options.cache:
        try:
            yield upstream
        finally:
            await upstream.aclose()
        return
    caching = CachingStore(home.open_store(), upstream)
    try:
        yield caching
    finally:
        await caching.aclose()
