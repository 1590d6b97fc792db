"""Challenge-response authentication giving a short-lived token (sans-IO).

A client proves that it holds a user's Ed25519 key, and gets a JWT it presents
on the sync transports (``Authorization: Bearer``). The flow (see
``docs/auth.md`` for the wire format):

1. The node hands out a :meth:`AuthService.challenge`: its own id (Peer ID), a
   32-byte random nonce, and when it was issued and expires.
2. The client signs :func:`challenge_message` of that challenge and its user id
   with the user's key (:func:`answer_challenge`). The user id *is* the public
   key (``z6Mk…``), so the node needs no lookup to check the signature.
3. :meth:`AuthService.issue_token` checks the answer and returns an EdDSA JWT
   signed with the node key, valid ``token_ttl_s`` seconds.
4. :meth:`AuthService.verify` checks a token on every use.

Invariants:

1. A nonce answers at most once: it is consumed by the first answer that names
   it, whatever the outcome (a failed attempt cannot be retried with a better
   signature, and a good one cannot be replayed).
2. Only challenges issued here and still pending are answered: a foreign,
   unknown, replayed, expired or altered challenge is a :class:`ChallengeError`.
3. The pending set is bounded (``max_pending``, and ``max_pending_per_client``
   for each client) and pruned of expired challenges, so asking for challenges
   cannot exhaust memory, and one client's flood evicts only its own.
4. Membership is checked when a token is issued *and* on every verify, so a
   revoked user is refused at the next use of a token already held.
5. Tokens are EdDSA only; times are checked against the injected clock, never
   PyJWT's own reading of the system time.
6. The signed message starts with ``loomdb-auth-v1\\n`` (byte 0x6C), never with
   0xAC, the first byte of every signed entry (a DAG-CBOR map), so a challenge
   signature can never pass for an entry signature, nor the reverse.

Not thread-safe: one event loop owns an :class:`AuthService`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from loomdb.clock import Clock, SystemClock
from loomdb.errors import ChallengeError, SignatureError, TokenError, ValidationError
from loomdb.identity.keys import (
    ED25519_SIGNATURE_SIZE,
    RandomSource,
    SigningKey,
    verify_signature,
)
from loomdb.identity.peer_id import peer_id_from_public_key, public_key_from_peer_id
from loomdb.identity.user import UserIdentity, public_key_from_user_id
from loomdb.trust.principal import MemberCheck, Principal

AUTH_VERSION: Final = 1
MESSAGE_PREFIX: Final = b"loomdb-auth-v1\n"
NONCE_SIZE: Final = 32
TOKEN_ID_SIZE: Final = 16
MAX_TOKEN_CHARS: Final = 4096  # ours are ~400; anything far longer is not one of ours
JWT_ALGORITHM: Final = "EdDSA"
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")

_CHALLENGE_FIELDS: Final = frozenset({"v", "server", "nonce", "issued", "expires"})
_ANSWER_FIELDS: Final = frozenset({"challenge", "user", "signature"})
_BASE58: Final = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,128}\Z")  # peer and user ids
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*\Z")
_MAX_MS: Final = 2**53 - 1  # exact in every JSON implementation
_SYSTEM_CLOCK: Final = SystemClock()


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5), as JWTs spell bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes from canonical unpadded base64url (ValidationError if not)."""
    if not isinstance(text, str) or not _BASE64URL.match(text):
        raise ValidationError(f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValidationError(f"{what} is not unpadded base64url") from None
    if len(data) != size or b64url_encode(data) != text:
        raise ValidationError(f"{what} is not {size} bytes in canonical base64url")
    return data


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge as issued; :meth:`parse` reads the JSON form strictly."""

    server: str
    nonce: str
    issued: int
    expires: int

    def to_json(self) -> dict[str, Any]:
        return {
            "v": AUTH_VERSION,
            "server": self.server,
            "nonce": self.nonce,
            "issued": self.issued,
            "expires": self.expires,
        }

    @classmethod
    def parse(cls, value: object) -> Challenge:
        """Raise :class:`ValidationError` unless ``value`` is a well-formed challenge."""
        if not isinstance(value, Mapping):
            raise ValidationError("a challenge is a JSON object")
        keys = set(value)
        if keys != _CHALLENGE_FIELDS:
            missing = sorted(_CHALLENGE_FIELDS - keys)
            extra = sorted(str(k) for k in keys - _CHALLENGE_FIELDS)
            raise ValidationError(f"challenge fields: missing {missing}, unknown {extra}")
        if _int(value["v"]) != AUTH_VERSION:
            raise ValidationError(f"challenge version is not {AUTH_VERSION}")
        server = value["server"]
        if not isinstance(server, str) or not _BASE58.match(server):
            raise ValidationError("challenge server is not a peer id")
        nonce = value["nonce"]
        b64url_decode(nonce, NONCE_SIZE, "challenge nonce")
        issued, expires = _ms(value["issued"], "issued"), _ms(value["expires"], "expires")
        return cls(server, nonce, issued, expires)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms(value: object, what: str) -> int:
    ms = _int(value)
    if ms is None or not 0 <= ms <= _MAX_MS:
        raise ValidationError(f"challenge {what} is not a time in milliseconds")
    return ms


def _check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not _BASE58.match(user_id):
        raise ValidationError("a user id is a z6Mk… string")
    return user_id


def _message(challenge: Challenge, user_id: str) -> bytes:
    fields = (
        challenge.server,
        challenge.nonce,
        str(challenge.issued),
        str(challenge.expires),
        user_id,
    )
    return MESSAGE_PREFIX + "".join(f"{field}\n" for field in fields).encode("utf-8")


def challenge_message(challenge: Mapping[str, Any], user_id: str) -> bytes:
    """The bytes a user signs to answer ``challenge``: ``loomdb-auth-v1\\n`` then the
    server, nonce, issued, expires and user id, each followed by ``\\n``.

    No field can hold a newline (they are checked), so the message is unambiguous."""
    return _message(Challenge.parse(challenge), _check_user_id(user_id))


def answer_challenge(challenge: Mapping[str, Any], identity: UserIdentity) -> dict[str, Any]:
    """The client's answer to ``challenge``, signed with ``identity``'s key."""
    parsed = Challenge.parse(challenge)
    signature = identity.signing_key.sign(_message(parsed, identity.user_id))
    return {
        "challenge": parsed.to_json(),
        "user": identity.user_id,
        "signature": b64url_encode(signature),
    }


def check_issued_token(token: object, server_id: str, user_id: str) -> dict[str, Any]:
    """The client's check of a token it was just given: signed (EdDSA) by the key
    inside ``server_id`` (a Peer ID holds its public key), issued by and for that
    server (``iss``, ``aud``), for ``user_id`` (``sub``); its claims.

    Times are left to the server, whose clock judges them. Raises
    :class:`TokenError` for a token of another server or user, or not a token."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise TokenError("not a token")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(server_id))
    except ValidationError as exc:
        raise TokenError(f"cannot check a token of {server_id!r}: {exc.message}") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            audience=server_id,
            issuer=server_id,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not one {server_id} issued: {exc}") from None
    if claims["sub"] != user_id:
        raise TokenError(f"the token is for {claims['sub']!r}, not {user_id}")
    return claims


VERIFIED_CACHE: Final = 4096


class AuthService:
    """The node side: hands out challenges, turns good answers into tokens, checks tokens.

    ``node_key`` signs the tokens; ``server_id`` (its Peer ID) is their issuer and
    audience and the ``server`` of every challenge. ``check_member`` decides who
    may authenticate, now: it is called before a token is issued and on every
    :meth:`verify`.
    """

    def __init__(
        self,
        node_key: SigningKey,
        check_member: MemberCheck,
        *,
        clock: Clock = _SYSTEM_CLOCK,
        random: RandomSource = os.urandom,
        challenge_ttl_ms: int = 60_000,
        token_ttl_s: int = 600,
        max_pending: int = 10_000,
        max_pending_per_client: int = 32,
    ) -> None:
        for name, value in [
            ("challenge_ttl_ms", challenge_ttl_ms),
            ("token_ttl_s", token_ttl_s),
            ("max_pending", max_pending),
            ("max_pending_per_client", max_pending_per_client),
        ]:
            if _int(value) is None or value < 1:
                raise ValidationError(f"{name} must be a positive whole number")
        self.server_id: Final = peer_id_from_public_key(node_key.public_key)
        self._private_key = Ed25519PrivateKey.from_private_bytes(node_key.seed)
        self._public_key = self._private_key.public_key()
        self._check_member = check_member
        self._clock = clock
        self._random = random
        self.challenge_ttl_ms = challenge_ttl_ms
        self.token_ttl_s = token_ttl_s
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self._pending: OrderedDict[str, Challenge] = OrderedDict()  # by nonce, oldest first
        self._client_of: dict[str, str] = {}  # nonce -> who asked for it
        self._by_client: dict[str, OrderedDict[str, None]] = {}  # oldest first
        # Tokens whose signature, issuer and audience checked out: a WebSocket checks
        # its token before every frame, and EdDSA verification costs ~200 µs.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @property
    def pending(self) -> int:
        """How many challenges await an answer (for tests and metrics)."""
        return len(self._pending)

    # --- challenges -------------------------------------------------------------------

    def challenge(self, client: str = "") -> dict[str, Any]:
        """A new challenge, JSON-ready; it can be answered once, before it expires.

        ``client`` names who asks (the HTTP API passes the peer's address): each
        client holds at most ``max_pending_per_client`` pending challenges (its
        own oldest is dropped first), and when the whole set is full the client
        holding the most loses its oldest, so a flood from one client never
        evicts another's."""
        now = self._clock.now_ms()
        self._prune(now)
        issued = Challenge(
            server=self.server_id,
            nonce=b64url_encode(self._random(NONCE_SIZE)),
            issued=now,
            expires=now + self.challenge_ttl_ms,
        )
        self._pending[issued.nonce] = issued
        self._client_of[issued.nonce] = client
        mine = self._by_client.setdefault(client, OrderedDict())
        mine[issued.nonce] = None
        if len(mine) > self.max_pending_per_client:
            self._drop(next(iter(mine)))
        if len(self._pending) > self.max_pending:
            greediest = max(self._by_client.values(), key=len)
            self._drop(next(iter(greediest)))
        return issued.to_json()

    def _drop(self, nonce: str) -> Challenge | None:
        """Forget the pending challenge ``nonce``; it, if it was pending."""
        issued = self._pending.pop(nonce, None)
        client = self._client_of.pop(nonce, None)
        if client is not None:
            mine = self._by_client[client]
            del mine[nonce]
            if not mine:
                del self._by_client[client]
        return issued

    def _prune(self, now: int) -> None:
        # Issued in order with one TTL, so they expire in order too (a clock that
        # steps back only delays pruning; the expiry check below still holds).
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.expires > now:
                break
            self._drop(oldest.nonce)

    def issue_token(self, answer: Mapping[str, Any]) -> dict[str, Any]:
        """A token for a good ``answer`` to a challenge issued here.

        Raises :class:`ValidationError` for a malformed answer,
        :class:`ChallengeError` for a foreign, unknown, replayed, expired, altered
        or badly signed one, and what ``check_member`` raises."""
        now = self._clock.now_ms()
        issued = self._consume(answer)  # first, so even a failed attempt uses the nonce up
        self._prune(now)
        if not isinstance(answer, Mapping) or set(answer) != _ANSWER_FIELDS:
            raise ValidationError("an answer has exactly the fields challenge, user, signature")
        challenge = Challenge.parse(answer["challenge"])
        user_id = _check_user_id(answer["user"])
        public_key = public_key_from_user_id(user_id)  # the user id names the key
        signature = b64url_decode(answer["signature"], ED25519_SIGNATURE_SIZE, "signature")
        if challenge.server != self.server_id:
            raise ChallengeError("the challenge was issued by another server")
        if issued is None:
            raise ChallengeError("the challenge is unknown here, or was already answered")
        if challenge != issued:
            raise ChallengeError("the challenge was altered")
        if now >= issued.expires:
            raise ChallengeError("the challenge has expired; ask for a new one")
        try:
            verify_signature(public_key, _message(challenge, user_id), signature)
        except SignatureError:
            raise ChallengeError("the answer is not signed by the user's key") from None
        self._check_member(user_id)
        return self._token(user_id, now)

    def _consume(self, answer: object) -> Challenge | None:
        """Remove and return the pending challenge the answer names, if any."""
        if not isinstance(answer, Mapping):
            return None
        challenge = answer.get("challenge")
        if not isinstance(challenge, Mapping):
            return None
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str):
            return None
        return self._drop(nonce)

    # --- tokens -----------------------------------------------------------------------

    def _token(self, user_id: str, now_ms: int) -> dict[str, Any]:
        now_s = now_ms // 1000
        expires = now_s + self.token_ttl_s
        claims = {
            "iss": self.server_id,
            "aud": self.server_id,
            "sub": user_id,
            "iat": now_s,
            "nbf": now_s,
            "exp": expires,
            "jti": b64url_encode(self._random(TOKEN_ID_SIZE)),
        }
        token = jwt.encode(claims, self._private_key, algorithm=JWT_ALGORITHM)
        return {
            "token": token,
            "expires_at": expires * 1000,
            "user": user_id,
            "server": self.server_id,
        }

    def verify(self, token: str) -> Principal:
        """The principal ``token`` stands for, now.

        Raises :class:`TokenError` for a token that is not one of ours (tampered,
        another server's, another algorithm), expired or not yet valid, and what
        ``check_member`` raises for its user."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise TokenError("not a token")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        # Times and membership are checked at every use; the signature only once.
        user_id = self._check_claims(claims)
        self._check_member(user_id)
        return Principal(user_id, claims["jti"])

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=[JWT_ALGORITHM],
                audience=self.server_id,
                issuer=self.server_id,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,  # checked below, on the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is refused: {exc}") from None
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> str:
        if claims["iss"] != self.server_id or claims["aud"] != self.server_id:
            raise TokenError("the token was issued by another server")
        exp, nbf = _int(claims["exp"]), _int(claims["nbf"])
        if exp is None or nbf is None or _int(claims["iat"]) is None:
            raise TokenError("the token's times are not whole seconds")
        if not isinstance(claims["jti"], str):
            raise TokenError("the token has no id")
        now = self._clock.now_ms()
        if now >= exp * 1000:
            raise TokenError("the token has expired")
        if now < nbf * 1000:
            raise TokenError("the token is not valid yet")
        try:
            public_key_from_user_id(_check_user_id(claims["sub"]))
        except ValidationError:
            raise TokenError("the token's subject is not a user id") from None
        return str(claims["sub"])
