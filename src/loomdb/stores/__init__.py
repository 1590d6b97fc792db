"""Stores: the one ``ContentAddressedStore`` interface and its implementations."""

from loomdb.stores.base import (
    ContentAddressedStore,
    EntryInput,
    PutResult,
    PutStatus,
    Received,
    StoreHead,
)
from loomdb.stores.memory import MemoryStore
from loomdb.stores.sqlite import SQLiteStore

__all__ = [
    "ContentAddressedStore",
    "EntryInput",
    "MemoryStore",
    "PutResult",
    "PutStatus",
    "Received",
    "SQLiteStore",
    "StoreHead",
]
