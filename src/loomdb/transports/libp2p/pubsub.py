"""Gossipsub on the node's host, with py-libp2p 0.8.1's lossy defaults fixed.

Measured (``../shared/notes/py-libp2p.md``), py-libp2p loses messages without a
word in three places. Here each is raised and **every drop is counted**
(:data:`DROPS`, shown in ``p2p info``):

* **spam protection** caps every forwarder at 10 messages per topic per second —
  the node's *own* publishes included. :class:`NodeGossipSub` never limits its
  own publishes and allows :data:`REMOTE_RATE` per second to others; a message
  refused for its rate is counted (``rate_limited``).
* **two queues of 32** drop when full: each subscription's channel
  (``SUBSCRIPTION_CHANNEL_SIZE`` in ``libp2p.pubsub.pubsub``) and each peer's
  outbound queue (``OutBoundQueueSize`` in ``libp2p.pubsub.rpc_queue``). Neither
  is a constructor argument: :func:`tune_pubsub` — the one place they are
  patched — sets both to :data:`QUEUE_SIZE` (``RpcQueue``'s default argument is
  bound when its module loads, so its ``__defaults__`` are patched too). A
  subscription's drop is counted by :class:`NodePubsub` (``subscription_full``),
  an outbound drop by wrapping ``drop_rpc`` (``outbound_dropped``).

Also: a peer's subscriptions beyond 100 topics are ignored by default (raised to
:data:`MAX_PEER_TOPICS`); gossipsub's heartbeat is 1 s (not 120 s); the node's
own messages are flood-published; IP-diversity "eclipse protection" is off (all
peers share one address on a machine or behind one NAT).

Per-message CPU: py-libp2p's read path, task spawning and Yamux reads are patched by
:mod:`~loomdb.transports.libp2p.pubsub_reads`, :mod:`~loomdb.transports.libp2p.task_parents`,
:mod:`~loomdb.transports.libp2p.yamux_env` and :mod:`~loomdb.transports.libp2p.yamux_reads`
(``LOOMDB_PYLIBP2P_HOT_PATH=1`` leaves them out, for measuring), and a copy of a message
already seen is dropped before its task (:meth:`NodePubsub._is_subscribed_to_msg`).

The patches are process-wide (py-libp2p reads module globals), as is
:data:`DROPS`: one daemon runs one host.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Final

import trio
from libp2p.abc import IHost
from libp2p.peer import peerstore as _peerstore_module
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as _gossipsub_module
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub import rpc_queue as _rpc_queue_module
from libp2p.pubsub import utils as _utils_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import signature_validator
from libp2p.tools.anyio_service import background_trio_service

from loomdb.transports.libp2p.pubsub_reads import buffer_pubsub_reads
from loomdb.transports.libp2p.task_parents import index_task_parents
from loomdb.transports.libp2p.yamux_credit import credit_at_half_window
from loomdb.transports.libp2p.yamux_env import read_yamux_env_once
from loomdb.transports.libp2p.yamux_reads import read_open_streams_directly

QUEUE_SIZE: Final = 4096
"""Each subscription's channel and each peer's outbound queue (py-libp2p: 32)."""
REMOTE_RATE: Final = 2000.0
"""Messages per topic per second a forwarding peer may send (py-libp2p: 10)."""
MAX_RPC_BYTES: Final = 1024 * 1024
"""An inbound pubsub RPC larger than this is refused by py-libp2p unread."""
HEARTBEAT_SECONDS: Final = 1
"""Gossipsub's mesh maintenance (the spec's 1 s; py-libp2p's default is 120 s)."""
MAX_PEER_TOPICS: Final = 10_000
"""Topics a peer may join as this node sees it: py-libp2p ignores a peer's
subscriptions beyond 100, which would make a peer following its 101st collection
deaf to this node's messages for it."""

DROPS: Counter[str] = Counter()
"""Messages lost inside py-libp2p, by where: ``rate_limited``,
``subscription_full``, ``outbound_dropped``, ``pending_dropped``."""

_original_drop_rpc = _rpc_queue_module.drop_rpc
_original_consume = _utils_module.maybe_consume_signed_record
_original_envelope = _peerstore_module.env_to_send_in_RPC
ENVELOPE_SECONDS: Final = 5.0
"""How long the node's own signed peer record is reused before its addresses are
looked at again."""
IDONTWANT_MIN_BYTES: Final = 1024
"""IDONTWANT is sent for messages at least this large (go-libp2p's threshold)."""

# The last signed peer record each host accepted from each peer, and each host's
# own (the host itself held weakly: an id() can be reused once a host is gone).
_consumed: dict[tuple[ID, ID], bytes] = {}
_envelopes: dict[int, tuple[weakref.ref[IHost], float, tuple[bytes, bool]]] = {}


def _consume_once(msg: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
    """py-libp2p verifies the signed peer record of every RPC (one Ed25519 check per
    message, IDONTWANT and control included): the bytes already accepted from that
    peer are not checked again."""
    if not msg.HasField("senderRecord"):
        return True
    record = bytes(msg.senderRecord)
    key = (host.get_id(), peer_id)
    if _consumed.get(key) == record:
        return True
    ok: bool = _original_consume(msg, host, peer_id)
    if ok:
        _consumed[key] = record
    return ok


def _envelope_cached(host: IHost) -> tuple[bytes, bool]:
    """py-libp2p re-reads (and re-parses) the host's addresses for every RPC it
    sends, to reuse its signed peer record: here the answer is kept a few seconds."""
    now = time.monotonic()
    cached = _envelopes.get(id(host))
    if cached is not None and cached[0]() is host and now - cached[1] < ENVELOPE_SECONDS:
        return cached[2]
    answer: tuple[bytes, bool] = _original_envelope(host)
    _envelopes[id(host)] = (weakref.ref(host), now, answer)
    return answer


_original_signature_validator = signature_validator
_publishing: ContextVar[bool] = ContextVar("loomdb_pubsub_publishing", default=False)


def _validate_unless_just_signed(msg: rpc_pb2.Message) -> bool:
    """py-libp2p verifies the signature of every message it pushes, its own included,
    right after signing it (one Ed25519 verification per publish): not while
    :meth:`NodePubsub.publish` pushes the message it signed itself."""
    if _publishing.get():
        return True
    ok: bool = _original_signature_validator(msg)
    return ok


def _counting_drop_rpc(peer_id: ID, rpc: rpc_pb2.RPC) -> None:
    DROPS["outbound_dropped"] += max(1, len(rpc.publish))
    _original_drop_rpc(peer_id, rpc)


def tune_pubsub(queue_size: int = QUEUE_SIZE) -> None:
    """Raise py-libp2p's two queues to ``queue_size`` and count outbound drops
    (idempotent; see the module doc)."""
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = queue_size
    _rpc_queue_module.OutBoundQueueSize = queue_size
    init: Any = _rpc_queue_module.RpcQueue.__init__
    defaults = init.__defaults__
    init.__defaults__ = (queue_size, *defaults[1:])
    _pubsub_module.drop_rpc = _counting_drop_rpc  # type: ignore[attr-defined]
    _pubsub_module.signature_validator = _validate_unless_just_signed  # type: ignore[attr-defined]
    for module in (_pubsub_module, _gossipsub_module):
        module.maybe_consume_signed_record = _consume_once  # type: ignore[attr-defined]
        module.env_to_send_in_RPC = _envelope_cached  # type: ignore[attr-defined]
    if os.environ.get("LOOMDB_YAMUX_CREDIT_EVERY_READ") != "1":  # for measuring only
        credit_at_half_window()
    if os.environ.get("LOOMDB_PYLIBP2P_HOT_PATH") != "1":  # for measuring only
        buffer_pubsub_reads()
        index_task_parents()
        read_yamux_env_once()
        read_open_streams_directly()


class NodeGossipSub(GossipSub):
    """Gossipsub whose own publishes are never rate-limited and go to every peer of
    the topic (flood publishing), and whose rate refusals are counted.

    py-libp2p also queues each published message for every connected peer whose
    subscription to the topic it has not seen (the subscription race), at most
    100 a peer, flushed when the subscription arrives; beyond that the oldest go.
    That queue fills with messages for topics the peer never joins, and it warned
    at every publish: here it is pruned quietly and what it drops is counted
    (``pending_dropped``; mostly messages for peers that do not want them).
    """

    def _get_peers_to_send(
        self,
        topic_ids: Iterable[str],
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterable[ID]:
        """Flood publishing (go-libp2p's default): the node's own messages go to every
        peer in the topic, not only its mesh — a peer just back in a topic is kept
        out of the mesh for the prune back-off (60 s), and would miss them."""
        topic_ids = list(topic_ids)
        peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
        if self.pubsub is not None and origin == self.pubsub.my_id:
            for topic in topic_ids:
                peers.update(self.pubsub.peer_topics.get(topic, ()))
            peers.discard(origin)
        return peers

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        """Only for large messages (go-libp2p's rule): for a small one the IDONTWANT
        costs its peers as much as the duplicate it saves."""
        cached = self.mcache.get(msg_id)
        if cached is not None and len(cached.data) < IDONTWANT_MIN_BYTES:
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    def _prune_pending_messages(self, peer_id: ID) -> None:
        queue = self._pending_messages.get(peer_id)
        if queue is None:
            return
        now = time.time()
        queue[:] = [(ts, m) for ts, m in queue if now - ts <= self._pending_messages_ttl]
        excess = len(queue) - self._max_pending_messages_per_peer
        if excess > 0:
            DROPS["pending_dropped"] += excess
            del queue[:excess]
        if not queue:
            self._pending_messages.pop(peer_id, None)

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        if self.pubsub is not None and peer_id == self.pubsub.my_id:
            return True
        ok: bool = super()._check_spam_protection(peer_id, msg)
        if not ok:
            DROPS["rate_limited"] += 1
        return ok


class NodePubsub(Pubsub):
    """Pubsub that counts a message its subscription's full channel drops, does
    not verify the signature it has just put on its own message, and drops a copy
    of a message it has already seen before spawning a task for it."""

    def _is_subscribed_to_msg(self, msg: rpc_pb2.Message) -> bool:
        """py-libp2p asks this of each received message (its only use) and spawns a
        ``push_msg`` task for it, whose first real step is the seen-cache check: in a
        mesh most copies are duplicates (with 4 peers, 3 of every 4), each paid a
        task spawn, a blacklist check and a message id for nothing. Here a message
        already seen is refused before the task; one not yet seen goes on exactly
        as before (and ``push_msg`` checks the cache again)."""
        return super()._is_subscribed_to_msg(msg) and not self._is_msg_seen(msg)

    async def publish(self, topic_id: str | list[str], data: bytes) -> None:
        token = _publishing.set(True)  # task-local: a received message is still checked
        try:
            await super().publish(topic_id, data)
        finally:
            _publishing.reset(token)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        for topic in publish_message.topicIDs:
            channel = self.subscribed_topics_send.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(publish_message)
            except trio.WouldBlock:
                DROPS["subscription_full"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # unsubscribed meanwhile


def make_pubsub(host: IHost) -> tuple[NodePubsub, NodeGossipSub]:
    """A gossipsub router and its pubsub on ``host`` (not started: :func:`run_pubsub`)."""
    tune_pubsub()
    router = NodeGossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=HEARTBEAT_SECONDS,
        max_messages_per_topic_per_second=REMOTE_RATE,
        # Mesh diversity by IP makes no sense on one machine or a LAN; peers are
        # the ones the node was told to dial.
        eclipse_protection_enabled=False,
    )
    pubsub = NodePubsub(
        host,
        router,
        strict_signing=True,
        max_inbound_rpc_size=MAX_RPC_BYTES,
        max_subscriptions_per_peer=MAX_PEER_TOPICS,
        cache_size=4096,
    )
    return pubsub, router


@asynccontextmanager
async def run_pubsub(pubsub: NodePubsub, router: NodeGossipSub) -> AsyncIterator[NodePubsub]:
    """Run both services until the block ends."""
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        yield pubsub


def drops() -> dict[str, int]:
    names = ("rate_limited", "subscription_full", "outbound_dropped", "pending_dropped")
    return {k: DROPS.get(k, 0) for k in names}
