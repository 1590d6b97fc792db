"""Entries: the unit of data. Signed, content-addressed, payload-encrypted."""

from loomdb.entries.cid import CID
from loomdb.entries.entry import (
    DEFAULT_POLICY,
    FORMAT_VERSION,
    Entry,
    EntryMeta,
    EntryPolicy,
    Kind,
    ParentRef,
    build_entry,
    decode_entry,
    decode_hashed,
)

__all__ = [
    "CID",
    "DEFAULT_POLICY",
    "FORMAT_VERSION",
    "Entry",
    "EntryMeta",
    "EntryPolicy",
    "Kind",
    "ParentRef",
    "build_entry",
    "decode_entry",
    "decode_hashed",
]
