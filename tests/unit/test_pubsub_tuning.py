"""``loomdb.transports.libp2p.pubsub``: the signature of a message py-libp2p has just
signed for this node is not verified again — and only that one: a received message
with a bad signature is still refused, also while a publish is under way elsewhere."""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from loomdb.transports.libp2p import pubsub as tuning


def signed(data: bytes) -> rpc_pb2.Message:
    keys = create_new_key_pair()
    msg = rpc_pb2.Message(
        data=data,
        topicIDs=["t"],
        from_id=ID.from_pubkey(keys.public_key).to_bytes(),
        seqno=b"\x00" * 8,
    )
    msg.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    return msg


def test_only_the_message_being_published_skips_verification() -> None:
    good, forged = signed(b"hello"), signed(b"hello")
    forged.data = b"changed after signing"
    check = tuning._validate_unless_just_signed
    assert check(good) and not check(forged)
    token = tuning._publishing.set(True)  # inside NodePubsub.publish's own task
    try:
        assert check(forged)
    finally:
        tuning._publishing.reset(token)
    assert not check(forged)
