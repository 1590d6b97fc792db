"""Challenge-response authentication and tokens (loomdb.trust.auth), sans-IO.

Every test runs on a ManualClock and seeded randomness: no sockets, no sleeps.
The transports over real sockets are tests/integration/test_auth_transport.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from loomdb.clock import ManualClock
from loomdb.errors import (
    ChallengeError,
    NotMemberError,
    RevokedError,
    TokenError,
    ValidationError,
)
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.identity.user import UserIdentity, public_key_from_user_id
from loomdb.trust.auth import (
    MESSAGE_PREFIX,
    NONCE_SIZE,
    AuthService,
    answer_challenge,
    b64url_decode,
    b64url_encode,
    challenge_message,
)
from loomdb.trust.principal import Principal
from tests.support import seeded_random, signing_key

ALICE = UserIdentity.generate(seeded_random(101))
BOB = UserIdentity.generate(seeded_random(102))
MALLORY = UserIdentity.generate(seeded_random(103))
NODE_KEY = signing_key("node")
OTHER_NODE_KEY = signing_key("other-node")


class Members:
    """A membership check over a set: unknown users are not members, revoked ones revoked."""

    def __init__(self, *users: UserIdentity) -> None:
        self.members = {user.user_id for user in users}
        self.revoked: set[str] = set()
        self.checked: list[str] = []

    def __call__(self, user_id: str) -> None:
        self.checked.append(user_id)
        if user_id in self.revoked:
            raise RevokedError(f"{user_id} was revoked")
        if user_id not in self.members:
            raise NotMemberError(f"{user_id} is not a member")


def make_service(
    members: Members | None = None,
    clock: ManualClock | None = None,
    key: Any = NODE_KEY,
    seed: int = 1,
    **kw: Any,
) -> AuthService:
    return AuthService(
        key,
        members if members is not None else Members(ALICE, BOB),
        clock=clock or ManualClock(),
        random=seeded_random(seed),
        **kw,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{signature}"


# --- the message -------------------------------------------------------------------


def test_the_signed_message_is_the_documented_bytes() -> None:
    challenge = {
        "v": 1,
        "server": "12D3KooWabc",
        "nonce": b64(bytes(range(32))),
        "issued": 1000,
        "expires": 61000,
    }
    assert challenge_message(challenge, ALICE.user_id) == (
        b"loomdb-auth-v1\n12D3KooWabc\n"
        + b64(bytes(range(32))).encode()
        + b"\n1000\n61000\n"
        + ALICE.user_id.encode()
        + b"\n"
    )


def test_the_message_never_starts_like_an_entry() -> None:
    """Entry signatures cover DAG-CBOR maps, whose first byte is 0xAC here; a challenge
    signature must never be one of those."""
    service = make_service()
    assert MESSAGE_PREFIX[0] != 0xAC
    for user in (ALICE, BOB, MALLORY):
        for _ in range(20):
            message = challenge_message(service.challenge(), user.user_id)
            assert message.startswith(b"loomdb-auth-v1\n")
            assert message[0] != 0xAC


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server", "12D3\nKooW"),
        ("server", ""),
        ("nonce", "short"),
        ("nonce", b64(bytes(32)) + "="),
        ("issued", True),
        ("issued", -1),
        ("expires", 1.5),
        ("v", 2),
    ],
)
def test_a_malformed_challenge_has_no_message(field: str, value: object) -> None:
    challenge = make_service().challenge()
    with pytest.raises(ValidationError):
        challenge_message({**challenge, field: value}, ALICE.user_id)


def test_a_user_id_with_a_newline_has_no_message() -> None:
    challenge = make_service().challenge()
    for bad in (ALICE.user_id + "\n", "z6Mk\nabc", "", "did:key:" + ALICE.user_id):
        with pytest.raises(ValidationError):
            challenge_message(challenge, bad)


def test_base64url_is_strict() -> None:
    assert b64url_decode(b64url_encode(b"\xff" * 32), 32, "x") == b"\xff" * 32
    for bad in ["", "====", b64(b"\xff" * 31), b64(b"\xff" * 32) + "=", "+/" * 22, 42]:
        with pytest.raises(ValidationError):
            b64url_decode(bad, 32, "x")


# --- challenges --------------------------------------------------------------------


def test_the_good_flow_gives_a_token_for_the_user() -> None:
    clock = ManualClock(1_760_000_000_500)
    members = Members(ALICE)
    service = make_service(members, clock)
    challenge = service.challenge()
    assert set(challenge) == {"v", "server", "nonce", "issued", "expires"}
    assert challenge["v"] == 1
    assert challenge["server"] == service.server_id == peer_id_from_public_key(NODE_KEY.public_key)
    assert len(b64url_decode(challenge["nonce"], NONCE_SIZE, "nonce")) == 32
    assert challenge["issued"] == clock.now_ms()
    assert challenge["expires"] == clock.now_ms() + 60_000
    assert service.pending == 1

    clock.advance(59_999)  # the last millisecond it may be answered in
    reply = service.issue_token(answer_challenge(challenge, ALICE))
    assert service.pending == 0
    assert reply["user"] == ALICE.user_id
    assert reply["server"] == service.server_id
    now_s = clock.now_ms() // 1000
    assert reply["expires_at"] == (now_s + 600) * 1000
    assert members.checked == [ALICE.user_id]

    principal = service.verify(reply["token"])
    assert principal.user_id == ALICE.user_id
    assert not principal.anonymous
    assert principal.token_id
    assert members.checked == [ALICE.user_id, ALICE.user_id]


def test_the_token_is_a_standard_eddsa_jwt_with_the_documented_claims() -> None:
    clock = ManualClock(1_760_000_000_000)
    service = make_service(clock=clock, token_ttl_s=120)
    token = service.issue_token(answer_challenge(service.challenge(), ALICE))["token"]
    header, claims, _ = jwt_parts(token)
    assert header["alg"] == "EdDSA"
    assert set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti"}
    assert claims["iss"] == claims["aud"] == service.server_id
    assert claims["sub"] == ALICE.user_id
    assert claims["iat"] == claims["nbf"] == 1_760_000_000
    assert claims["exp"] == 1_760_000_120
    # Anyone holding the node's public key (it is in the node's Peer ID) can check it.
    public = Ed25519PublicKey.from_public_bytes(NODE_KEY.public_key)
    decoded = jwt.decode(
        token,
        public,
        algorithms=["EdDSA"],
        audience=service.server_id,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert decoded == claims


def test_two_tokens_have_different_ids() -> None:
    service = make_service()
    first = service.verify(
        service.issue_token(answer_challenge(service.challenge(), ALICE))["token"]
    )
    second = service.verify(
        service.issue_token(answer_challenge(service.challenge(), ALICE))["token"]
    )
    assert first.user_id == second.user_id
    assert first.token_id != second.token_id


def test_a_replayed_challenge_is_refused() -> None:
    service = make_service()
    answer = answer_challenge(service.challenge(), ALICE)
    service.issue_token(answer)
    with pytest.raises(ChallengeError, match="already answered"):
        service.issue_token(answer)


def test_a_failed_attempt_uses_the_nonce_up() -> None:
    service = make_service()
    challenge = service.challenge()
    bad = {**answer_challenge(challenge, ALICE), "signature": b64(bytes(64))}
    with pytest.raises(ChallengeError, match="not signed"):
        service.issue_token(bad)
    with pytest.raises(ChallengeError, match="already answered"):
        service.issue_token(answer_challenge(challenge, ALICE))  # the good answer, too late


def test_a_refused_member_uses_the_nonce_up() -> None:
    members = Members(ALICE)
    service = make_service(members)
    challenge = service.challenge()
    with pytest.raises(NotMemberError):
        service.issue_token(answer_challenge(challenge, BOB))
    members.members.add(BOB.user_id)
    with pytest.raises(ChallengeError):
        service.issue_token(answer_challenge(challenge, BOB))


def test_an_expired_challenge_is_refused() -> None:
    clock = ManualClock()
    service = make_service(clock=clock, challenge_ttl_ms=1000)
    challenge = service.challenge()
    clock.advance(1000)
    with pytest.raises(ChallengeError, match="expired"):
        service.issue_token(answer_challenge(challenge, ALICE))


def test_an_expired_challenge_is_refused_even_when_not_yet_pruned() -> None:
    """The clock went back after the challenge was issued, so pruning keeps it; the
    expiry check still holds when the clock comes forward again."""
    clock = ManualClock(10_000_000)
    service = make_service(clock=clock, challenge_ttl_ms=1000)
    clock.set(10_000_000 + 5000)
    late = service.challenge()
    clock.set(10_000_000)
    early = service.challenge()  # issued "before" late, expires before it
    clock.set(10_000_000 + 1500)  # early has expired; late has not
    with pytest.raises(ChallengeError, match="expired"):
        service.issue_token(answer_challenge(early, ALICE))
    assert service.issue_token(answer_challenge(late, ALICE))["user"] == ALICE.user_id


def test_a_challenge_of_another_server_is_refused() -> None:
    ours = make_service(seed=1)
    theirs = make_service(key=OTHER_NODE_KEY, seed=2)
    ours.challenge()
    foreign = theirs.challenge()
    with pytest.raises(ChallengeError, match="another server"):
        ours.issue_token(answer_challenge(foreign, ALICE))
    # The same challenge claimed for us, and signed so: its nonce was never issued here.
    relabelled = {**foreign, "server": ours.server_id}
    with pytest.raises(ChallengeError, match="unknown"):
        ours.issue_token(answer_challenge(relabelled, ALICE))
    # It still works where it came from.
    assert theirs.issue_token(answer_challenge(foreign, ALICE))["server"] == theirs.server_id


def test_a_challenge_never_issued_is_refused() -> None:
    service = make_service()
    made_up = {**service.challenge(), "nonce": b64(b"\x07" * 32)}
    with pytest.raises(ChallengeError, match="unknown"):
        service.issue_token(answer_challenge(made_up, ALICE))


@pytest.mark.parametrize(
    "change",
    [
        {"issued": 1},
        {"expires": 9_999_999_999_999},  # a longer life, signed by the user
        {"issued": 1_760_000_000_001},
    ],
)
def test_an_altered_challenge_is_refused(change: dict[str, Any]) -> None:
    service = make_service()
    challenge = service.challenge()
    with pytest.raises(ChallengeError, match="altered"):
        service.issue_token(answer_challenge({**challenge, **change}, ALICE))


def test_a_signature_by_another_user_is_refused() -> None:
    service = make_service(Members(ALICE, BOB, MALLORY))
    challenge = service.challenge()
    by_mallory = answer_challenge(challenge, MALLORY)
    with pytest.raises(ChallengeError, match="not signed"):
        service.issue_token({**by_mallory, "user": ALICE.user_id})


def test_a_signature_of_another_message_is_refused() -> None:
    service = make_service()
    first, second = service.challenge(), service.challenge()
    signature = answer_challenge(first, ALICE)["signature"]  # for the other nonce
    with pytest.raises(ChallengeError, match="not signed"):
        service.issue_token({**answer_challenge(second, ALICE), "signature": signature})


def test_a_flipped_signature_bit_is_refused() -> None:
    service = make_service()
    answer = answer_challenge(service.challenge(), ALICE)
    raw = bytearray(b64url_decode(answer["signature"], 64, "signature"))
    raw[10] ^= 1
    with pytest.raises(ChallengeError, match="not signed"):
        service.issue_token({**answer, "signature": b64(bytes(raw))})


def test_an_unknown_user_is_refused_at_the_challenge() -> None:
    members = Members(ALICE)
    service = make_service(members)
    with pytest.raises(NotMemberError):
        service.issue_token(answer_challenge(service.challenge(), MALLORY))
    assert members.checked == [MALLORY.user_id]


def test_a_revoked_user_is_refused_at_the_challenge() -> None:
    members = Members(ALICE, BOB)
    members.revoked.add(BOB.user_id)
    service = make_service(members)
    with pytest.raises(RevokedError):
        service.issue_token(answer_challenge(service.challenge(), BOB))


def test_membership_is_checked_only_after_the_signature() -> None:
    """Nobody learns who is a member by sending unsigned answers."""
    members = Members(ALICE)
    service = make_service(members)
    answer = {**answer_challenge(service.challenge(), MALLORY), "signature": b64(bytes(64))}
    with pytest.raises(ChallengeError):
        service.issue_token(answer)
    assert members.checked == []


JUNK_ANSWERS: list[Any] = [
    None,
    [],
    "answer",
    42,
    {},
    {"challenge": None, "user": ALICE.user_id, "signature": b64(bytes(64))},
    {"challenge": {}, "user": ALICE.user_id, "signature": b64(bytes(64))},
    {"challenge": {"nonce": 5}, "user": ALICE.user_id, "signature": b64(bytes(64))},
    {"challenge": [], "user": 5, "signature": None},
]


@pytest.mark.parametrize("answer", JUNK_ANSWERS)
def test_junk_answers_are_validation_errors(answer: Any) -> None:
    with pytest.raises(ValidationError):
        make_service().issue_token(answer)


@pytest.mark.parametrize(
    "change",
    [
        {"user": None},
        {"user": "z6Mkxyz"},  # base58, but not a key
        {"user": "did:key:z6Mk"},
        {"signature": "AAAA"},
        {"signature": b64(bytes(64)) + "=="},
        {"signature": 7},
        {"extra": 1},
    ],
)
def test_answers_with_bad_fields_are_validation_errors(change: dict[str, Any]) -> None:
    service = make_service()
    with pytest.raises(ValidationError):
        service.issue_token({**answer_challenge(service.challenge(), ALICE), **change})
    assert service.pending == 0  # the nonce was used up all the same


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    challenge=json_values | st.fixed_dictionaries({}, optional={"nonce": json_values}),
    user=json_values,
    signature=json_values,
    extra=st.dictionaries(st.sampled_from(["x", "v"]), json_values, max_size=1),
)
def test_any_json_answer_raises_only_our_errors(
    challenge: Any, user: Any, signature: Any, extra: dict[str, Any]
) -> None:
    service = make_service()
    with pytest.raises((ValidationError, ChallengeError)):
        service.issue_token({"challenge": challenge, "user": user, "signature": signature, **extra})


def test_pending_challenges_are_bounded_oldest_dropped_first() -> None:
    service = make_service(max_pending=3)
    challenges = [service.challenge() for _ in range(5)]
    assert service.pending == 3
    for dropped in challenges[:2]:
        with pytest.raises(ChallengeError, match="unknown"):
            service.issue_token(answer_challenge(dropped, ALICE))
    for kept in challenges[2:]:
        assert service.issue_token(answer_challenge(kept, ALICE))["user"] == ALICE.user_id
    assert service.pending == 0


def test_a_flood_from_one_client_never_evicts_another_clients_challenge() -> None:
    service = make_service(max_pending=100, max_pending_per_client=8)
    owner = service.challenge("192.0.2.1")
    flood = [service.challenge("198.51.100.7") for _ in range(10_000)]
    assert service.pending == 9  # the owner's one and the flood's newest 8
    assert service.issue_token(answer_challenge(owner, ALICE))["user"] == ALICE.user_id
    assert service.issue_token(answer_challenge(flood[-1], ALICE))["user"] == ALICE.user_id
    with pytest.raises(ChallengeError, match="unknown"):
        service.issue_token(answer_challenge(flood[0], ALICE))


def test_many_clients_fill_the_set_and_the_greediest_loses_first() -> None:
    service = make_service(max_pending=10, max_pending_per_client=8)
    owner = service.challenge("owner")
    greedy = [service.challenge("greedy") for _ in range(8)]
    others = [service.challenge(f"c{i}") for i in range(5)]
    assert service.pending == 10
    # the greedy client lost its 4 oldest; the owner and every other client kept theirs
    assert service.issue_token(answer_challenge(owner, ALICE))
    for kept in [*greedy[4:], *others[-1:]]:
        assert service.issue_token(answer_challenge(kept, ALICE))
    with pytest.raises(ChallengeError, match="unknown"):
        service.issue_token(answer_challenge(greedy[0], ALICE))


def test_expired_challenges_are_pruned() -> None:
    clock = ManualClock()
    service = make_service(clock=clock, challenge_ttl_ms=1000, max_pending_per_client=100)
    for _ in range(50):
        service.challenge()
    clock.advance(999)
    service.challenge()
    assert service.pending == 51
    clock.advance(1)
    service.challenge()
    assert service.pending == 2  # the one from 999 ms, and the new one


@pytest.mark.parametrize(
    "name", ["challenge_ttl_ms", "token_ttl_s", "max_pending", "max_pending_per_client"]
)
@pytest.mark.parametrize("value", [0, -1, True])
def test_limits_must_be_positive(name: str, value: int) -> None:
    limits: dict[str, Any] = {name: value}
    with pytest.raises(ValidationError):
        make_service(**limits)


# --- tokens ------------------------------------------------------------------------


def token_for(service: AuthService, user: UserIdentity = ALICE) -> str:
    return str(service.issue_token(answer_challenge(service.challenge(), user))["token"])


def test_a_token_expires_on_the_injected_clock() -> None:
    clock = ManualClock(1_760_000_000_000)
    service = make_service(clock=clock, token_ttl_s=60)
    token = token_for(service)
    clock.advance(59_999)
    assert service.verify(token) == Principal(ALICE.user_id, jwt_parts(token)[1]["jti"])
    clock.advance(1)
    with pytest.raises(TokenError, match="expired"):
        service.verify(token)


def test_a_token_is_not_valid_before_it_was_issued() -> None:
    clock = ManualClock(1_760_000_000_000)
    service = make_service(clock=clock)
    token = token_for(service)
    clock.advance(-1)
    with pytest.raises(TokenError, match="not valid yet"):
        service.verify(token)


def test_a_tampered_payload_is_refused() -> None:
    service = make_service(Members(ALICE, BOB))
    token = token_for(service, ALICE)
    header, claims, signature = jwt_parts(token)
    for change in ({"sub": BOB.user_id}, {"exp": claims["exp"] + 3600}):
        forged = forge(header, {**claims, **change}, signature)
        with pytest.raises(TokenError):
            service.verify(forged)
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(TokenError):
        service.verify(f"{head}.{body}.{flipped}")


def test_a_token_of_another_server_is_refused() -> None:
    ours = make_service(seed=1)
    theirs = make_service(key=OTHER_NODE_KEY, seed=2)
    with pytest.raises(TokenError):
        ours.verify(token_for(theirs))


def test_a_token_signed_by_another_key_claiming_to_be_ours_is_refused() -> None:
    service = make_service()
    _, claims, _ = jwt_parts(token_for(service))
    other = Ed25519PrivateKey.from_private_bytes(OTHER_NODE_KEY.seed)
    forged = jwt.encode(claims, other, algorithm="EdDSA")
    with pytest.raises(TokenError):
        service.verify(forged)


def test_our_key_with_wrong_claims_is_refused() -> None:
    """Signed by the node key, but for another audience, issuer or subject."""
    clock = ManualClock()
    service = make_service(clock=clock)
    _, claims, _ = jwt_parts(token_for(service))
    key = Ed25519PrivateKey.from_private_bytes(NODE_KEY.seed)
    for change in (
        {"aud": "12D3KooWsomeoneelse"},
        {"iss": "12D3KooWsomeoneelse"},
        {"aud": [service.server_id, "12D3KooWx"]},
        {"sub": "nobody"},
        {"sub": 42},
        {"exp": "soon"},
        {"nbf": None},
        {"jti": None},
    ):
        with pytest.raises(TokenError):
            service.verify(jwt.encode({**claims, **change}, key, algorithm="EdDSA"))


def test_alg_none_is_refused() -> None:
    service = make_service()
    header, claims, _ = jwt_parts(token_for(service))
    for alg in ("none", "None", "NONE"):
        with pytest.raises(TokenError):
            service.verify(forge({**header, "alg": alg}, claims, ""))


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    """The classic confusion: an HMAC 'signed' with the node's public key, which anyone has."""
    service = make_service()
    _, claims, _ = jwt_parts(token_for(service))
    public = Ed25519PublicKey.from_public_bytes(NODE_KEY.public_key)
    for secret in (
        NODE_KEY.public_key,
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        unsigned = forge({"alg": "HS256", "typ": "JWT"}, claims).rstrip(".")
        mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        with pytest.raises(TokenError):
            service.verify(f"{unsigned}.{b64(mac)}")


def test_a_user_revoked_after_issue_is_refused_at_every_use() -> None:
    members = Members(ALICE)
    service = make_service(members)
    token = token_for(service)
    assert service.verify(token).user_id == ALICE.user_id
    members.revoked.add(ALICE.user_id)
    for _ in range(3):
        with pytest.raises(RevokedError):
            service.verify(token)
    members.revoked.discard(ALICE.user_id)
    members.members.discard(ALICE.user_id)
    with pytest.raises(NotMemberError):
        service.verify(token)


@pytest.mark.parametrize(
    "token",
    ["", "a", "a.b", "a.b.c", "a.b.c.d", "...", "x" * 5000, "é.é.é", "eyJ.eyJ.", None, 7],
)
def test_junk_tokens_are_token_errors(token: Any) -> None:
    with pytest.raises(TokenError):
        make_service().verify(token)


@settings(max_examples=200, deadline=None)
@given(header=json_values, claims=json_values, signature=st.text(max_size=90))
def test_any_forged_token_raises_only_token_errors(
    header: Any, claims: Any, signature: str
) -> None:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    with pytest.raises(TokenError):
        make_service().verify(f"{head}.{body}.{signature}")


def test_the_user_id_names_the_key_that_signed() -> None:
    """No lookup: the key that must have signed is inside the user id."""
    assert public_key_from_user_id(ALICE.user_id) == ALICE.signing_key.public_key
