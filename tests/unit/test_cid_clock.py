from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loomdb.clock import HybridLogicalClock, ManualClock, pack_hlc, unpack_hlc
from loomdb.entries.cid import CID
from loomdb.errors import ValidationError


def test_cid_text_round_trip_and_order() -> None:
    a, b = CID.of(b"a"), CID.of(b"b")
    assert CID.parse(str(a)) == a
    assert CID.coerce(a.binary) == a and CID.coerce(str(a)) == a
    assert (a < b) == (a.binary < b.binary)
    assert sorted([b, a]) == sorted([a, b])
    assert len({a, CID(a.binary)}) == 1
    assert a.digest == a.binary[4:]


@pytest.mark.parametrize(
    "text", ["", "bafy", "Qm" + "x" * 44, "b" + "a" * 58, "z" * 59, "bafyrei" + "!" * 52]
)
def test_cid_parse_refuses_garbage(text: str) -> None:
    with pytest.raises(ValidationError):
        CID.parse(text)


def test_cid_refuses_other_codecs_and_hashes() -> None:
    with pytest.raises(ValidationError):
        CID(b"\x01\x55\x12\x20" + bytes(32))  # raw codec
    with pytest.raises(ValidationError):
        CID(b"\x01\x71\x1e\x20" + bytes(32))  # blake3


def test_hlc_is_strictly_increasing_when_the_clock_stands_still_or_goes_back() -> None:
    wall = ManualClock(1_000)
    hlc = HybridLogicalClock(wall)
    seen = [hlc.now() for _ in range(5)]
    wall.set(500)  # the wall clock jumps back
    seen += [hlc.now() for _ in range(3)]
    assert seen == sorted(set(seen))
    wall.set(2_000)
    assert unpack_hlc(hlc.now()) == (2_000, 0)


def test_hlc_adopts_remote_values_within_the_drift_bound() -> None:
    wall = ManualClock(10_000)
    hlc = HybridLogicalClock(wall, max_drift_ms=1_000)
    hlc.observe(pack_hlc(10_500, 7))
    assert hlc.now() == pack_hlc(10_500, 8)
    hlc.observe(pack_hlc(99_999_999, 0))  # a peer far in the future is not followed
    assert unpack_hlc(hlc.now())[0] == 10_500


def test_cid_from_digest_is_the_cid_of_that_digest() -> None:
    data = b"an entry"
    cid = CID.of(data)
    assert CID.from_digest(cid.digest) == cid
    assert hash(CID.from_digest(cid.digest)) == hash(cid)
    assert str(CID.from_digest(cid.digest)) == str(cid)
    for bad in (b"", cid.digest[:-1], cid.binary, bytearray(cid.digest)):
        with pytest.raises(ValidationError, match="32 bytes"):
            CID.from_digest(bad)  # type: ignore[arg-type]


@given(st.binary(min_size=32, max_size=32))
def test_text_form_is_multibase_base32_of_the_binary(digest: bytes) -> None:
    cid = CID.from_digest(digest)
    want = "b" + base64.b32encode(cid.binary).decode("ascii").rstrip("=").lower()
    assert str(cid) == want and len(want) == 59
    assert CID.parse(str(cid)) == cid


def test_text_form_of_a_known_cid() -> None:
    cid = CID.of(b"")  # sha2-256 of nothing, as IPFS tools print it
    assert hashlib.sha256(b"").digest() == cid.digest
    assert str(cid) == "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
