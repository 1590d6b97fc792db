"""``loomdb client doc import COLLECTION FILE``: JSON lines into a collection, in batches.

Each non-blank line of FILE (``-``: stdin) is one document: a JSON object in
the API's JSON value form. With ``--id-field F`` the document's id is the
line's field F (taken out of the value); without it, the node picks ids.
Lines go to ``POST /api/v0/collections/{c}/docs:batch`` in batches of at most
``--batch`` documents (and ~3 MiB), one request after the other.

What is written when a line is refused (not JSON, not an object, a value or id
the node refuses, an id that exists): every document before that line, and
nothing from it on. The node writes a batch all or nothing and names the
document it refused, so the lines of that batch before it are sent again on
their own. The error names the line; ``--skip-lines N`` goes on after a fix.
Only a lost connection leaves a batch unknown: the error says which lines.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from loomdb.cli.client import _coll, api_client
from loomdb.errors import LoomError, TransportError, ValidationError

MAX_DOCS = 1000  # per request: the API's bound (loomdb.api.routes.MAX_BATCH)
MAX_BODY = 3 * 1024 * 1024  # per request, under the API's 4 MiB body limit
_AT_ITEM = re.compile(r"\Adocuments\[\d+\]: ")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, in the input
    item: bytes  # ``{"id"?, "value"}`` as JSON, ready for the request body


@dataclass(slots=True)
class Report:
    """What the import did so far: the summary printed at the end, or with the error."""

    collection: str
    imported: int = 0
    requests: int = 0
    through: int = 0  # every line up to this one is imported (or blank, or skipped)
    read_bytes: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def json(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "collection": self.collection,
            "imported": self.imported,
            "lines": self.through,
            "requests": self.requests,
            "seconds": round(seconds, 3),
            "per_second": round(self.imported / seconds) if seconds > 0 else None,
        }


class ImportFailed(Exception):
    """The import stopped: ``error`` (its class gives the exit code) at ``lines``."""

    def __init__(self, error: LoomError, first: int, last: int, unknown: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.first = first
        self.last = last
        self.unknown = unknown  # no answer: that batch may have been written


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_lines(
    stream: IO[bytes], report: Report, id_field: str | None, skip: int
) -> Iterator[Line]:
    """The documents of ``stream``, one per non-blank line after the first ``skip``;
    a bad line raises :class:`ImportFailed` naming it."""
    for number, raw in enumerate(stream, 1):
        report.read_bytes += len(raw)
        if number <= skip or not raw.strip():
            continue
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad_line(number, f"not valid JSON ({exc})") from None
        except RecursionError:
            raise _bad_line(number, "nested too deeply") from None
        if not isinstance(value, dict):
            raise _bad_line(number, f"expected a JSON object, got {type(value).__name__}")
        item: dict[str, Any] = {"value": value}
        if id_field is not None:
            doc_id = value.pop(id_field, None)
            if not isinstance(doc_id, str):
                raise _bad_line(number, f"no string field {id_field!r} for the id (--id-field)")
            item = {"id": doc_id, "value": value}
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        yield Line(number, text.encode("utf-8"))


def _bad_line(number: int, message: str) -> ImportFailed:
    return ImportFailed(ValidationError(message), number, number)


def batches(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    """Batches of at most ``size`` lines and :data:`MAX_BODY` bytes. A bad line
    ends the iteration only after the batch of the lines before it."""
    batch: list[Line] = []
    used = 0
    try:
        for line in lines:
            if batch and (len(batch) == size or used + len(line.item) > MAX_BODY):
                yield batch
                batch, used = [], 0
            batch.append(line)
            used += len(line.item) + 1
    except ImportFailed:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, made on a thread up to ``depth`` ahead: the next batch is
    read and encoded while the node writes this one. What ``items`` raises is
    raised here, in its place."""
    made: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        while not stop.is_set():
            try:
                made.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put("item", item)
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put("error", exc)
        else:
            put("done", None)

    thread = threading.Thread(target=produce, name="loomdb-import-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = made.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # the consumer stopped (or failed): the reader stops too


def _body(batch: list[Line]) -> bytes:
    return b'{"documents":[' + b",".join(line.item for line in batch) + b"]}"


def send(api: Any, path: str, batch: list[Line], report: Report) -> None:
    """Write ``batch``. When the node refuses one of its documents, the lines before
    it are written on their own, then :class:`ImportFailed` names the refused one."""
    failure: ImportFailed | None = None
    while batch:
        try:
            answer = api.call("POST", path, content=_body(batch))
        except LoomError as exc:
            report.requests += 1
            index = exc.index
            if index is None or not 0 <= index < len(batch):
                unknown = isinstance(exc, TransportError)
                raise ImportFailed(exc, batch[0].number, batch[-1].number, unknown) from None
            exc.message = _AT_ITEM.sub("", exc.message)
            number = batch[index].number
            failure = ImportFailed(exc, number, number)
            batch = batch[:index]
            continue
        report.requests += 1
        report.imported += int(answer["count"])
        report.through = batch[-1].number
        break
    if failure is not None:
        raise failure


def _total_bytes(stream: IO[bytes]) -> int | None:
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _bar(report: Report, total: int | None) -> str:
    seconds = report.seconds
    rate = report.imported / seconds if seconds > 0 else 0.0
    counts = f"{report.imported:,} documents, {rate:,.0f}/s, {seconds:.1f} s"
    if not total:
        return counts
    width = 30
    part = min(1.0, report.read_bytes / total)
    filled = int(width * part)
    return f"[{'#' * filled}{'.' * (width - filled)}] {part:4.0%} {counts}"


def _failure_message(failed: ImportFailed, report: Report) -> str:
    where = (
        f"line {failed.first}"
        if failed.first == failed.last
        else (f"lines {failed.first}-{failed.last}")
    )
    done = f"imported {report.imported} documents"
    before = f"every line before {failed.first}" if failed.first > 1 else "none"
    if failed.unknown:
        return (
            f"{where}: {failed.error.message}. {done} ({before}); lines {failed.first}-"
            f"{failed.last} may or may not have been written (no answer): check, then go on "
            f"with --skip-lines {failed.first - 1} or --skip-lines {failed.last}"
        )
    return (
        f"{where}: {failed.error.message}. {done} ({before}); nothing from line "
        f"{failed.first} on was written: fix it, then go on with --skip-lines {failed.first - 1}"
    )


def cmd_doc_import(args: argparse.Namespace) -> None:
    if not 1 <= args.batch <= MAX_DOCS:
        raise ValidationError(f"--batch must be 1-{MAX_DOCS}")
    if args.file == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        try:
            stream = open(args.file, "rb")  # noqa: SIM115 (closed below, also on errors)
        except OSError as exc:
            raise ValidationError(f"cannot read {args.file}: {exc.strerror}") from None
    report = Report(args.collection)
    total = _total_bytes(stream)
    show_bar = not args.json and not args.quiet and sys.stderr.isatty()
    path = f"{_coll(args.collection)}/docs:batch"
    try:
        with api_client(args) as api:
            lines = read_lines(stream, report, args.id_field, args.skip_lines)
            for batch in read_ahead(batches(lines, args.batch)):
                send(api, path, batch, report)
                if show_bar:
                    print("\r" + _bar(report, total), end="", file=sys.stderr, flush=True)
    except ImportFailed as failed:
        if show_bar:
            print(file=sys.stderr)
        message = _failure_message(failed, report)
        if args.json:
            out = report.json()
            out["error"] = {
                "code": failed.error.code,
                "message": failed.error.message,
                "lines": [failed.first, failed.last],
                "written": "unknown" if failed.unknown else "no",
            }
            out["skip_lines"] = failed.first - 1
            print(json.dumps(out, indent=2))
        error = type(failed.error)(message)
        raise error from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if show_bar:
        print("\r" + _bar(report, total), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report.json(), indent=2))
        return
    out = report.json()
    rate = f" ({out['per_second']:,}/s)" if out["per_second"] else ""
    print(
        f"imported {report.imported:,} documents into {args.collection} from"
        f" {args.file if args.file != '-' else 'stdin'} in {out['seconds']:.2f} s{rate},"
        f" {report.requests} request(s)"
    )
