"""Documents: Loro CRDTs over the entry store, collections, schemas and queries."""

from loomdb.documents.database import DEFAULT_SPACE, Collection, Database
from loomdb.documents.model import (
    CollectionInfo,
    Counter,
    Document,
    HistoryItem,
    KeyWait,
    Text,
)
from loomdb.documents.values import Increment

__all__ = [
    "DEFAULT_SPACE",
    "Collection",
    "CollectionInfo",
    "Counter",
    "Database",
    "Document",
    "HistoryItem",
    "Increment",
    "KeyWait",
    "Text",
]
