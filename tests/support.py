"""Helpers shared by the tests: deterministic keys, entry factories, hand-made entries."""

from __future__ import annotations

import hashlib
import random as _random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cbor2

from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, ParentRef, build_entry
from loomdb.identity.keys import NamedKey, SigningKey


def seeded_random(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    rng = _random.Random(seed)
    return rng.randbytes


def signing_key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"test-author:" + name.encode()).digest())


def named_key(key_id: str = "space/default@1") -> NamedKey:
    return NamedKey(key_id, hashlib.sha256(b"test-key:" + key_id.encode()).digest())


class EntryFactory:
    """Builds valid entries with sensible defaults and a ticking created-at."""

    def __init__(self, author: SigningKey | None = None, key: NamedKey | None = None) -> None:
        self.author = author or signing_key("alice")
        self.key = key if key is not None else named_key()
        self.ts = 1_760_000_000_000 << 16
        self.random = seeded_random(1)

    def __call__(
        self,
        payload: bytes = b"payload",
        *,
        parents: tuple[ParentRef, ...] | list[ParentRef] = (),
        document: str = "doc-1",
        collection: str = "notes",
        space: str = "space-1",
        kind: str = "change",
        public: bool = False,
    ) -> Entry:
        self.ts += 1
        return build_entry(
            author=self.author,
            space=space,
            collection=collection,
            document=document,
            kind=kind,
            payload=payload,
            created_at=self.ts,
            parents=parents,
            key=None if public else self.key,
            random=self.random,
        )

    def chain(self, n: int, **kw: Any) -> list[Entry]:
        out: list[Entry] = []
        for i in range(n):
            out.append(self(f"step {i}".encode(), parents=out[-1:], **kw))
        return out


def fields_of(entry: Entry) -> dict[str, Any]:
    """The entry's wire fields, in wire order, for tests that edit and re-sign them."""
    return codec.decode_fields(entry.raw)


def sign_fields(fields: dict[str, Any], author: SigningKey) -> bytes:
    """Encode and sign arbitrary fields (in wire order) exactly as a writer would.

    Lets a test make an entry whose signature is valid but which breaks another
    rule, so the test can assert the specific error for that rule.
    """
    if type(fields["payload"]) is not bytes:  # cannot be spliced; the type check fires first
        return cbor2.dumps({**fields, "signature": bytes(64)})
    header = codec.encode_header({k: fields[k] for k in codec.HEADER_FIELDS})
    signed = codec.signed_bytes(header, fields["payload"])
    return codec.entry_bytes(signed, author.sign(signed))


def fake_cid(n: int) -> CID:
    return CID.of(b"fake-%d" % n)


def run_python(
    *args: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a Python script or module with this interpreter, bounded in time, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
