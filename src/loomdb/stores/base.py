"""The one store interface, ``ContentAddressedStore``, and what every store shares.

Every store (memory, SQLite, and later a remote proxy) implements the same
async :class:`ContentAddressedStore` and passes the same conformance suite
(``tests/conformance/test_store.py``). Sync reads only what this interface
offers, and none of it needs a decryption key.

Invariants every implementation keeps:
1. An entry is stored at most once, under the CID of its bytes; ``put_entries``
   is idempotent and verifies every entry it did not build itself.
2. A batch is atomic where it lands: after a crash, either all of the batch's
   accepted entries are there or none; never part of one entry.
3. A bad entry never blocks the rest of its batch: each gets its own result.
4. ``seq`` (receipt order) grows by one per stored entry and is never reused
   within an ``epoch``; a new epoch means cursors from before are meaningless.
5. The heads of a document are its stored entries that no stored entry of the
   same document names as a parent, whatever order entries arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, Entry, EntryMeta, EntryPolicy
from loomdb.entries.verify import decode_many
from loomdb.errors import (
    CidMismatchError,
    EntryError,
    EntryTooLargeError,
    LoomError,
    TooManyParentsError,
    UnknownKindError,
    ValidationError,
)

if TYPE_CHECKING:
    from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest

EntryInput = Entry | bytes | tuple[CID, bytes]
"""What ``put_entries`` takes: a built or decoded entry, its bytes, or (claimed CID, bytes)."""


class PutStatus(StrEnum):
    ACCEPTED = "accepted"  # new, verified and stored
    DUPLICATE = "duplicate"  # already held (or earlier in the same batch); nothing changed
    REJECTED = "rejected"  # refused; see ``error``


@dataclass(frozen=True, slots=True)
class PutResult:
    """The outcome for one input of ``put_entries``, in input order."""

    cid: CID
    status: PutStatus
    error: LoomError | None = None
    """An EntryError (the entry itself is bad) or a TrustError (its author may not write)."""
    seq: int | None = None  # where an accepted entry stands in the store's receipt order

    @property
    def ok(self) -> bool:
        return self.status is not PutStatus.REJECTED

    @property
    def reason(self) -> str | None:
        return None if self.error is None else f"{self.error.code}: {self.error.message}"


@dataclass(frozen=True, slots=True)
class StoreHead:
    """Where a store's receipt log stands: its epoch and its last sequence number."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Received:
    """An entry with its position in the store's receipt order."""

    seq: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class SetKey:
    """A set of entries that sync reconciles: a whole space, one collection of it,
    or one document (``document`` needs ``collection``)."""

    space: str
    collection: str | None = None
    document: str | None = None

    def __post_init__(self) -> None:
        for what, value in (
            ("space", self.space),
            ("collection", self.collection),
            ("document", self.document),
        ):
            if value is not None and (type(value) is not str or not value):
                raise ValidationError(f"a set's {what} must be a non-empty string")
        if type(self.space) is not str:
            raise ValidationError("a set names its space")
        if self.document is not None and self.collection is None:
            raise ValidationError("a document set names its collection too")

    @property
    def kind(self) -> str:
        if self.document is not None:
            return "document"
        return "space" if self.collection is None else "collection"


@runtime_checkable
class ContentAddressedStore(Protocol):
    """A set of verified entries, addressed by CID, with the indexes sync needs."""

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        """Verify and store entries; one result per input, in order."""
        ...

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        """The entries, aligned with ``cids`` (``None`` where not held)."""
        ...

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]: ...

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        """Everything but the payload, aligned with ``cids``."""
        ...

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        """The document's current heads, sorted."""
        ...

    async def list_spaces(self) -> list[str]: ...

    async def list_collections(self, space: str) -> list[str]: ...

    async def list_documents(self, space: str, collection: str) -> list[str]: ...

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        """A document's entries, parents before children (ordered by height, then CID)."""
        ...

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        """Parents named by the given (held) entries that this store lacks, sorted."""
        ...

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        """Entries in local receipt order, those with ``seq > after``, at most ``limit``."""
        ...

    async def store_head(self) -> StoreHead: ...

    async def count(self) -> int: ...

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        """One Negentropy step per request, each over the entries of its set, run
        where the entries are (a remote store forwards the messages)."""
        ...

    async def aclose(self) -> None: ...


def check_limit(limit: int) -> int:
    if type(limit) is not int or limit < 1:
        raise ValidationError("limit must be a positive integer")
    return limit


def check_cids(cids: Sequence[CID]) -> list[CID]:
    out = list(cids)
    for cid in out:
        if not isinstance(cid, CID):
            raise ValidationError(f"expected CID objects, got {type(cid).__name__}")
    return out


@dataclass(slots=True)
class PreparedBatch:
    """A batch after the checks that need no write: results so far and what to insert."""

    results: list[PutResult | None]
    new: list[tuple[int, Entry]]  # (index in the batch, verified entry)


def prepare_batch(
    inputs: Iterable[EntryInput],
    held: Callable[[list[CID]], set[CID]],
    policy: EntryPolicy = DEFAULT_POLICY,
) -> PreparedBatch:
    """Sort a batch into duplicates, rejections and new verified entries.

    Duplicates are found by CID before any signature is checked (hashing is
    ~60x cheaper than Ed25519 verification), using ``held`` to ask the store
    which CIDs it has. Entries built or verified in this process are not
    verified again.
    """
    results: list[PutResult | None] = []
    staged: list[tuple[int, CID, bytes | None, Entry | None]] = []
    for i, item in enumerate(inputs):
        results.append(None)
        if isinstance(item, Entry):
            if item.verified:
                staged.append((i, item.cid, None, item))
            else:
                staged.append((i, CID.of(item.raw), item.raw, None))
        elif isinstance(item, bytes):
            staged.append((i, CID.of(item), item, None))
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], CID)
            and isinstance(item[1], bytes)
        ):
            claimed, data = item
            actual = CID.of(data)
            if actual != claimed:
                error = CidMismatchError(f"entry bytes hash to {actual}, not {claimed}")
                results[i] = PutResult(claimed, PutStatus.REJECTED, error)
            else:
                staged.append((i, actual, data, None))
        else:
            raise ValidationError(
                f"put_entries takes Entry, bytes or (CID, bytes), not {type(item).__name__}"
            )

    cids = [cid for _, cid, _, _ in staged]
    already = held(cids)
    if len(set(cids)) == len(cids):  # (the usual case; set() hashes each CID once)
        return _prepare_unique(staged, results, already, policy)
    # The bytes not held, each CID once, checked up front on every core at once.
    todo: dict[CID, bytes] = {}
    for _, cid, raw, built in staged:
        if built is None and raw is not None and not (already and cid in already):
            todo.setdefault(cid, raw)
    # Every CID here is CID.of of its bytes, computed above: not hashed again.
    checked = dict(
        zip(
            todo,
            decode_many(list(todo.values()), list(todo), policy=policy, hashed=True),
            strict=True,
        )
    )
    new: list[tuple[int, Entry]] = []
    seen: set[CID] = set()
    for i, cid, _, built in staged:
        if (already and cid in already) or cid in seen:  # (a CID's hash is a Python call)
            results[i] = PutResult(cid, PutStatus.DUPLICATE)
            continue
        try:
            if built is None:
                result = checked[cid]
                if isinstance(result, EntryError):
                    raise result
                entry = result
            else:
                check_policy(built, policy)
                entry = built
        except EntryError as exc:
            results[i] = PutResult(cid, PutStatus.REJECTED, exc)
            continue
        seen.add(cid)
        new.append((i, entry))
    return PreparedBatch(results, new)


def _prepare_unique(
    staged: list[tuple[int, CID, bytes | None, Entry | None]],
    results: list[PutResult | None],
    already: set[CID],
    policy: EntryPolicy,
) -> PreparedBatch:
    """The rest of :func:`prepare_batch` for a batch that names no CID twice: what the
    general loop does, without a dict and a set keyed by CID (five Python ``__hash__``
    calls per entry). The bytes to check are those not held, in batch order, and their
    results are taken in the same order."""
    todo = [
        (cid, raw)
        for _, cid, raw, built in staged
        if built is None and raw is not None and not (already and cid in already)
    ]
    checked = iter(
        decode_many([raw for _, raw in todo], [cid for cid, _ in todo], policy=policy, hashed=True)
    )
    new: list[tuple[int, Entry]] = []
    for i, cid, raw, built in staged:
        if already and cid in already:
            results[i] = PutResult(cid, PutStatus.DUPLICATE)
            continue
        if built is None:
            if raw is None:  # (never: staged holds bytes or a built entry)
                continue
            result = next(checked)
            if isinstance(result, EntryError):
                results[i] = PutResult(cid, PutStatus.REJECTED, result)
                continue
            new.append((i, result))
        else:
            try:
                check_policy(built, policy)
            except EntryError as exc:
                results[i] = PutResult(cid, PutStatus.REJECTED, exc)
                continue
            new.append((i, built))
    return PreparedBatch(results, new)


def check_policy(entry: Entry, policy: EntryPolicy) -> None:
    """The policy checks for an entry that was verified elsewhere in this process."""
    if entry.kind not in policy.kinds:
        raise UnknownKindError(f"unknown entry kind {entry.kind!r}")
    if len(entry.raw) > policy.max_entry_bytes:
        raise EntryTooLargeError(
            f"entry is {len(entry.raw)} bytes; the limit is {policy.max_entry_bytes}"
        )
    if len(entry.parents) > policy.max_parents:
        raise TooManyParentsError(f"{len(entry.parents)} parents; at most {policy.max_parents}")


def finish_results(batch: PreparedBatch, first_seq: int) -> list[PutResult]:
    """Fill in the results of the entries the store wrote, numbered from ``first_seq``
    in the order they were inserted."""
    out, accepted, new = batch.results, PutStatus.ACCEPTED, _new
    s_cid, s_status, s_error, s_seq = _RESULT_SETTERS
    for k, (i, entry) in enumerate(batch.new, first_seq):
        # PutResult(entry.cid, accepted, None, k), its slots set directly: a frozen
        # dataclass's __init__ sets each through object.__setattr__ (~2x the cost)
        out[i] = r = new(PutResult)
        s_cid(r, entry.cid)
        s_status(r, accepted)
        s_error(r, None)
        s_seq(r, k)
    return [r for r in out if r is not None]


_new = object.__new__
_RESULT_FIELDS = ("cid", "status", "error", "seq")
if tuple(f.name for f in fields(PutResult)) != _RESULT_FIELDS:  # (a field left unset otherwise)
    raise RuntimeError("finish_results sets every field of PutResult, in _RESULT_FIELDS order")
_RESULT_SETTERS = tuple(getattr(PutResult, name).__set__ for name in _RESULT_FIELDS)


async def fetch_raw(store: ContentAddressedStore, cids: Sequence[CID]) -> list[bytes | None]:
    """The entries' bytes, aligned with ``cids``. Uses the store's ``get_raw`` when it
    has one (SQLite, memory and remote stores do: no decoding on the way out)."""
    get_raw = getattr(store, "get_raw", None)
    if get_raw is not None:
        raws: list[bytes | None] = await get_raw(cids)
        return raws
    return [None if e is None else e.raw for e in await store.get_entries(cids)]
