"""Our encodings, checked against independent implementations of the same standards."""

from __future__ import annotations

import dag_cbor
from multiformats import CID as MfCID
from multiformats import multihash

from loomdb.entries.cid import CID
from tests.support import EntryFactory


def test_entries_are_dag_cbor_by_an_independent_codec(make_entry: EntryFactory) -> None:
    root = make_entry(b"root")
    child = make_entry(b"child", parents=[root])
    for entry in (root, child, make_entry(b"public", public=True)):
        value = dag_cbor.decode(entry.raw)  # strict: refuses non-canonical DAG-CBOR
        assert dag_cbor.encode(value) == entry.raw
        assert value["auth"] == entry.author
        assert value["h"] == entry.height
        assert value["ts"] == entry.created_at
    links = dag_cbor.decode(child.raw)["par"]
    assert [bytes(link) for link in links] == [root.cid.binary]
    assert links[0].encode("base32") == str(root.cid)


def test_cids_match_an_independent_multiformats_implementation(make_entry: EntryFactory) -> None:
    entry = make_entry()
    theirs = MfCID("base32", 1, "dag-cbor", multihash.digest(entry.raw, "sha2-256"))
    assert str(entry.cid) == str(theirs)
    assert entry.cid.binary == bytes(theirs)
    assert str(entry.cid).startswith("bafyrei")
    assert CID.parse(str(theirs)) == entry.cid
