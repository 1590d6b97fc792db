"""``loomdb client …``: thin commands over a running node's HTTP API.

Each command parses its arguments, makes one or two API calls and prints the
answer: for people by default, the API's own JSON with ``--json``. Every
command spells ``--url`` (default ``$LOOMDB_URL``, else
``http://127.0.0.1:9181``) and ``--json`` the same way.

An API error comes back as the LoomError of its ``code`` (so the CLI's one exit
code table applies); a node that cannot be reached is a
:class:`UnreachableError`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from loomdb.clock import hlc_to_seconds
from loomdb.errors import LoomError, UnreachableError, ValidationError
from loomdb.node.runtime import find_token

DEFAULT_URL = "http://127.0.0.1:9181"
URL_ENV = "LOOMDB_URL"
SPACE_ENV = "LOOMDB_SPACE"
SPACE_HEADER = "X-Loomdb-Space"
API_PREFIX = "/api/v0"
TIMEOUT_SECONDS = 30.0


def _codes(cls: type[LoomError]) -> Iterator[tuple[str, type[LoomError]]]:
    yield cls.code, cls
    for sub in cls.__subclasses__():
        yield from _codes(sub)


# --- talking to the node ----------------------------------------------------------


class ApiClient:
    """The node's API over httpx; raises only LoomErrors."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        space: str | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: the node's admin token (default: :func:`find_token` for ``url``)."""
        self.url = url.rstrip("/")
        if space is not None and not (space.isascii() and space.isprintable() and space):
            raise ValidationError(f"bad --space {space!r}: a space id is printable ASCII")
        headers = {SPACE_HEADER: space} if space is not None else {}
        token = find_token(self.url) if token is None else token
        if token:  # found for this URL only: never sent to another node
            headers["Authorization"] = f"Bearer {token}"
        try:
            # No proxies from the environment: a node is addressed directly.
            self._http = httpx.Client(
                base_url=self.url + API_PREFIX,
                timeout=timeout,
                transport=transport,
                trust_env=False,
                headers=headers,
            )
        except httpx.InvalidURL as exc:
            raise ValidationError(f"bad --url {url!r}: {exc}") from None
        self._by_code = dict(_codes(LoomError))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    @contextmanager
    def _translate(self, silence: str) -> Iterator[None]:
        """httpx's errors as LoomErrors; ``silence`` says what a read time-out means."""
        try:
            yield
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ValidationError(f"bad --url {self.url!r}: {exc}") from None
        except httpx.ConnectError:
            raise UnreachableError(
                f"cannot reach a loomdb node at {self.url}: connection refused "
                "(is 'loomdb start' running? set --url or $LOOMDB_URL)"
            ) from None
        except httpx.TimeoutException:
            raise UnreachableError(silence) from None
        except httpx.HTTPError as exc:
            raise UnreachableError(f"talking to {self.url} failed: {exc}") from None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        **params: Any,
    ) -> Any:
        """One request; ``body`` is sent as JSON, or ``content``: bytes that are JSON."""
        query = {k: v for k, v in params.items() if v is not None}
        headers = {"Content-Type": "application/json"} if content is not None else None
        with self._translate(f"no answer from {self.url} within {self._http.timeout.read} s"):
            response = self._http.request(
                method, path, json=body, content=content, headers=headers, params=query
            )
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            raise UnreachableError(
                f"{self.url} answered HTTP {response.status_code} without JSON: "
                "is it a loomdb node?"
            ) from None
        if response.is_error:
            raise self._error(response.status_code, data)
        return data

    def stream(self, path: str, body: Any, *, idle_timeout: float) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield the JSON objects of an NDJSON reply as they come;
        waits at most ``idle_timeout`` seconds for each line."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=idle_timeout)
        with (
            self._translate(f"{self.url} sent nothing for {idle_timeout} s"),
            self._http.stream("POST", path, json=body, timeout=timeout) as response,
        ):
            if response.is_error:
                response.read()
                try:
                    data = response.json()
                except ValueError:
                    data = None
                raise self._error(response.status_code, data)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def error_of(self, error: dict[str, Any], fallback: type[LoomError] = LoomError) -> LoomError:
        """The LoomError an API error body ``{code, message, index?}`` names."""
        exc = self._by_code.get(str(error.get("code")), fallback)(str(error.get("message")))
        index = error.get("index")
        if type(index) is int:
            exc.index = index
        return exc

    def _error(self, status: int, data: Any) -> LoomError:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return UnreachableError(f"{self.url} answered HTTP {status}: is it a loomdb node?")
        fallback = ValidationError if 400 <= status < 500 else LoomError
        return self.error_of(error, fallback)


def _seg(text: str) -> str:
    return quote(text, safe="")


def _coll(name: str) -> str:
    return f"/collections/{_seg(name)}"


def _doc(coll: str, doc_id: str) -> str:
    return f"{_coll(coll)}/docs/{_seg(doc_id)}"


# --- argument types -------------------------------------------------------------


def json_arg(text: str) -> Any:
    """A JSON argument, inline or ``@file``."""
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def json_object(text: str) -> dict[str, Any]:
    value = json_arg(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object: {text!r}")
    return value


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


_SYMBOL_OPS = {">=": "gte", "<=": "lte", "!=": "ne", "==": "eq", "=": "eq", ">": "gt", "<": "lt"}
_SYMBOL = re.compile(r"\s*([^\s<>=!]+)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*\Z", re.S)
_WORD = re.compile(r"\s*(\S+)\s+(eq|ne|lt|lte|gt|gte|in|contains|exists)(?:\s+(.*?))?\s*\Z", re.S)


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word: name=Ada


def where_arg(text: str) -> list[dict[str, Any]]:
    """``age>3``, ``name=Ada``, ``tags contains x``, ``email exists``, or JSON conditions."""
    if text.lstrip().startswith(("[", "{")):
        value = json_arg(text)
        conditions = [value] if isinstance(value, dict) else value
        if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
            raise argparse.ArgumentTypeError(f"expected a JSON condition or a list: {text!r}")
        return conditions
    if (m := _WORD.match(text)) is not None:
        field, op, rest = m.groups()
        if op == "exists":
            return [{"field": field, "op": op, "value": True if rest is None else _scalar(rest)}]
        if rest is not None:
            return [{"field": field, "op": op, "value": _scalar(rest)}]
    if (m := _SYMBOL.match(text)) is not None and m.group(3):
        field, op, rest = m.groups()
        return [{"field": field, "op": _SYMBOL_OPS[op], "value": _scalar(rest)}]
    raise argparse.ArgumentTypeError(
        f"cannot read condition {text!r}: use FIELD OP VALUE (= != < <= > >=), "
        "FIELD in|contains VALUE, FIELD exists, or JSON"
    )


def sort_arg(text: str) -> dict[str, str]:
    field, _, order = text.partition(":")
    if not field or order not in ("", "asc", "desc"):
        raise argparse.ArgumentTypeError(f"expected FIELD or FIELD:asc|desc: {text!r}")
    return {"field": field, "order": order or "asc"}


# --- output ---------------------------------------------------------------------


def _when(hlc: int) -> str:
    return datetime.fromtimestamp(hlc_to_seconds(hlc), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: dict[str, Any]) -> None:
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}")


def show_document(doc: dict[str, Any]) -> None:
    _table(
        {
            "id": doc["id"],
            "collection": doc["collection"],
            "created": _when(doc["created_at"]),
            "updated": _when(doc["updated_at"]),
            "heads": " ".join(doc["heads"]),
        }
    )
    print(json.dumps(doc["value"], indent=2, ensure_ascii=False))


def show_documents(page: dict[str, Any]) -> None:
    docs = page["documents"]
    for doc in docs:
        print(f"{doc['id']}  {json.dumps(doc['value'], ensure_ascii=False)}")
    print(f"({len(docs)} of {page['count']} documents)")


def show_collection(info: dict[str, Any]) -> None:
    _table(
        {
            "name": info["name"],
            "documents": info["documents"],
            "indexes": ", ".join(info["indexes"]) or "-",
            "schema": json.dumps(info["schema"]) if info["schema"] is not None else "-",
        }
    )


def show_collections(answer: dict[str, Any]) -> None:
    for info in answer["collections"]:
        extra = " (schema)" if info["schema"] is not None else ""
        print(f"{info['name']}  {info['documents']} documents{extra}")


def show_history(answer: dict[str, Any]) -> None:
    for item in answer["history"]:
        parents = ",".join(item["parents"]) or "-"
        reason = f" ({item['reason']})" if item.get("reason") else ""
        if item.get("waits_for_key"):
            reason += f" [waits for key {item['waits_for_key']}]"
        print(
            f"{item['height']:>4}  {item['cid']}  {item['kind']:<7} {item['state']}{reason}  "
            f"{_when(item['created_at'])}  author {item['author'][:16]}  parents {parents}"
        )


def show_node(info: dict[str, Any]) -> None:
    stats = info.pop("stats", {})
    _table({**info, **{f"stats.{k}": v for k, v in stats.items()}})


# --- commands ---------------------------------------------------------------------


def api_client(args: argparse.Namespace) -> ApiClient:
    """The client of the node at ``--url``, addressing ``--space`` (if given)."""
    return ApiClient(args.url, space=args.space)


def _run(
    args: argparse.Namespace, call: Callable[[ApiClient], Any], show: Callable[[Any], None]
) -> None:
    with api_client(args) as api:
        answer = call(api)
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        show(answer)


def cmd_node(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/node"), show_node)


def cmd_collection_add(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.schema is not None:
        body["schema"] = args.schema
    _run(args, lambda api: api.call("POST", "/collections", body), show_collection)


def cmd_collection_get(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", _coll(args.name)), show_collection)


def cmd_collection_list(args: argparse.Namespace) -> None:
    _run(args, lambda api: api.call("GET", "/collections"), show_collections)


def cmd_doc_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"value": args.value}
    if args.id is not None:
        body["id"] = args.id
    _run(args, lambda api: api.call("POST", f"{_coll(args.collection)}/docs", body), show_document)


def cmd_doc_get(args: argparse.Namespace) -> None:
    path = _doc(args.collection, args.id)
    if args.at is not None:
        path += f"/versions/{_seg(args.at)}"
    _run(args, lambda api: api.call("GET", path), show_document)


def cmd_doc_update(args: argparse.Namespace) -> None:
    if args.value is None and not args.unset:
        raise ValidationError("nothing to update: give a JSON object of fields, or --unset")
    body = {"set": args.value or {}, "unset": args.unset}
    _run(args, lambda api: api.call("PATCH", _doc(args.collection, args.id), body), show_document)


def cmd_doc_delete(args: argparse.Namespace) -> None:
    with api_client(args) as api:
        api.call("DELETE", _doc(args.collection, args.id))
    if args.json:
        print(json.dumps({"deleted": True, "collection": args.collection, "id": args.id}))
    else:
        print(f"deleted {args.collection}/{args.id}")


def cmd_doc_list(args: argparse.Namespace) -> None:
    path = f"{_coll(args.collection)}/docs"
    _run(
        args,
        lambda api: api.call("GET", path, limit=args.limit, offset=args.offset),
        show_documents,
    )


def cmd_doc_query(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"where": [c for group in args.where for c in group]}
    if args.sort:
        body["sort"] = args.sort
    if args.limit is not None:
        body["limit"] = args.limit
    if args.offset is not None:
        body["offset"] = args.offset
    path = f"{_coll(args.collection)}/query"
    _run(args, lambda api: api.call("POST", path, body), show_documents)


def cmd_doc_history(args: argparse.Namespace) -> None:
    path = f"{_doc(args.collection, args.id)}/history"
    _run(args, lambda api: api.call("GET", path), show_history)


def _bar(event: dict[str, Any]) -> str:
    total, done = event["to_pull"] + event["to_push"], event["pulled"] + event["pushed"]
    done += event["duplicates"] + len(event["rejected"]) + event["missing"]
    if event["phase"] == "reconcile":
        return f"reconciling… round {event['rounds']}"
    width = 30
    filled = width if total == 0 else width * done // total
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} entries"
        f" (pulled {event['pulled']}, pushed {event['pushed']}) {event['seconds']:.1f} s"
    )


def cmd_sync(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"remote": args.remote, "direction": args.direction}
    for name in ("space", "transport", "cafile", "peer_id"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.collection:
        body["collections"] = args.collection
    if args.document:
        body["documents"] = args.document
    if args.insecure:
        body["insecure"] = True
    show_bar = not args.json and not args.quiet and sys.stderr.isatty()
    final: dict[str, Any] | None = None
    with api_client(args) as api:
        for event in api.stream("/sync/run", body, idle_timeout=args.idle_timeout):
            if event.get("event") == "error":
                if show_bar:
                    print(file=sys.stderr)
                raise api.error_of(event.get("error") or {})
            if event.get("event") == "done":
                final = event
            elif show_bar:
                print("\r" + _bar(event), end="", file=sys.stderr, flush=True)
            elif not args.json and not args.quiet:
                print(_bar(event), file=sys.stderr, flush=True)
    if show_bar:
        print(file=sys.stderr)
    if final is None:  # the node reports every failure of the sync: this is its own
        raise UnreachableError(
            f"the node at {args.url} ended the sync without a result (see its log); run it again"
        )
    if args.json:
        print(json.dumps(final, indent=2))
        return
    print(
        f"synced with {args.remote}: pulled {final['pulled']}, pushed {final['pushed']},"
        f" rejected {len(final['rejected'])} in {final['rounds']} round(s), {final['seconds']} s"
    )
    for rejection in final["rejected"]:
        print(f"  rejected {rejection['cid']} ({rejection['side']}): {rejection['reason']}")
    if final.get("waiting_for_key"):
        keys = ", ".join(final.get("keys_wanted") or ())
        print(f"  {final['waiting_for_key']} entries held here wait for a key: {keys}")


def document_arg(text: str) -> list[str]:
    collection, sep, document = text.partition("/")
    if not sep or not collection or not document:
        raise argparse.ArgumentTypeError(f"expected COLLECTION/DOCUMENT, got {text!r}")
    return [collection, document]


# --- the parser --------------------------------------------------------------------


def _client_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--url``, ``--json`` and ``--space``, given before the command
    (``loomdb client --url U doc …``) or after it; after it wins.

    ``client`` itself holds the defaults. A command has the options without
    defaults (``SUPPRESS``): a subparser copies every value it has over its
    parent's, so a default there would overwrite what was given before it."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(os.environ.get(URL_ENV) or DEFAULT_URL),
        help=f"the node's API (default: ${URL_ENV} or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the API's JSON"
    )
    parser.add_argument(
        "--space",
        default=default(os.environ.get(SPACE_ENV) or None),
        help=f"the space to address (default: ${SPACE_ENV}, else the node's; sync: all on a relay)",
    )


def add_client_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``client`` and its commands to the ``loomdb`` subparsers ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    _client_options(common, defaults=False)

    help_ = "talk to a running node over its HTTP API"
    client: argparse.ArgumentParser = sub.add_parser("client", help=help_, description=help_)
    _client_options(client, defaults=True)
    groups = client.add_subparsers(dest="client_group", metavar="GROUP", required=True)

    def command(
        parent: Any, name: str, run: Callable[[argparse.Namespace], None], help_: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=help_, description=help_, parents=[common]
        )
        p.set_defaults(run=run)
        return p

    command(groups, "node", cmd_node, "show the node's ids, version and counts")

    help_ = "create, read and list collections"
    colls = groups.add_parser("collection", help=help_, description=help_)
    coll = colls.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    p = command(coll, "add", cmd_collection_add, "create a collection (or set its schema)")
    p.add_argument("name")
    p.add_argument("--schema", type=json_object, help="JSON schema, inline or @file")
    p = command(coll, "get", cmd_collection_get, "show a collection")
    p.add_argument("name")
    command(coll, "list", cmd_collection_list, "list collections")

    help_ = "create, read, update, delete, list and query documents"
    docs = groups.add_parser("doc", help=help_, description=help_)
    doc = docs.add_subparsers(dest="client_command", metavar="COMMAND", required=True)
    p = command(doc, "create", cmd_doc_create, "create a document")
    p.add_argument("collection")
    p.add_argument("value", metavar="JSON", type=json_object, help="the document, or @file")
    p.add_argument("--id", help="the document's id (default: a new random id)")
    p = command(doc, "get", cmd_doc_get, "show a document")
    p.add_argument("collection")
    p.add_argument("id")
    p.add_argument("--at", metavar="CID", help="as of this entry of its history")
    p = command(doc, "update", cmd_doc_update, "set fields (merged into maps) and unset fields")
    p.add_argument("collection")
    p.add_argument("id")
    p.add_argument("value", metavar="JSON", nargs="?", type=json_object, help="fields to set")
    p.add_argument("--unset", metavar="FIELD", action="append", default=[], help="(repeatable)")
    p = command(doc, "delete", cmd_doc_delete, "delete a document")
    p.add_argument("collection")
    p.add_argument("id")
    p = command(doc, "list", cmd_doc_list, "list documents")
    p.add_argument("collection")
    p.add_argument("--limit", metavar="N", type=non_negative, help="at most N (default 100)")
    p.add_argument("--offset", metavar="N", type=non_negative, help="skip the first N")
    p = command(doc, "query", cmd_doc_query, "find documents by field values")
    p.add_argument("collection")
    p.add_argument(
        "--where",
        metavar="COND",
        type=where_arg,
        action="append",
        default=[],
        help="'age>3', 'name=Ada', 'tags contains x', 'email exists' or JSON (repeatable)",
    )
    p.add_argument(
        "--sort", metavar="FIELD[:desc]", type=sort_arg, action="append", help="(repeatable)"
    )
    p.add_argument("--limit", metavar="N", type=non_negative, help="at most N (default 100)")
    p.add_argument("--offset", metavar="N", type=non_negative, help="skip the first N")
    p = command(doc, "history", cmd_doc_history, "list a document's entries, parents first")
    p.add_argument("collection")
    p.add_argument("id")
    from loomdb.cli.imports import MAX_DOCS, cmd_doc_import  # here: it imports this module

    help_ = "create documents from JSON lines (one object a line), in batches"
    p = command(doc, "import", cmd_doc_import, help_)
    p.add_argument("collection")
    p.add_argument("file", metavar="FILE.jsonl", help="one JSON object a line; '-': stdin")
    p.add_argument(
        "--id-field",
        metavar="FIELD",
        help="take each document's id from this field (removed from the value)",
    )
    p.add_argument(
        "--batch",
        metavar="N",
        type=non_negative,
        default=MAX_DOCS,
        help=f"documents per request, 1-{MAX_DOCS} (default {MAX_DOCS})",
    )
    p.add_argument(
        "--skip-lines", metavar="N", type=non_negative, default=0, help="start after line N"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    help_ = "sync the node (at --url) with another node, showing progress"
    p = command(groups, "sync", cmd_sync, help_)
    p.add_argument(
        "remote",
        metavar="REMOTE",
        help="the other node's base URL, or its multiaddr (/ip4/…/tcp/…/p2p/12D3KooW…: libp2p)",
    )
    way = p.add_mutually_exclusive_group()
    way.add_argument(
        "--pull",
        dest="direction",
        action="store_const",
        const="pull",
        help="only copy what the remote has",
    )
    way.add_argument(
        "--push",
        dest="direction",
        action="store_const",
        const="push",
        help="only copy what this node has",
    )
    p.set_defaults(direction="both")
    p.add_argument(
        "--collection", action="append", default=[], help="only this collection (repeatable)"
    )
    p.add_argument(
        "--document",
        metavar="COLLECTION/DOC",
        type=document_arg,
        action="append",
        default=[],
        help="only this document (repeatable)",
    )
    p.add_argument(
        "--peer-id",
        metavar="PEER_ID",
        help="the remote's Peer ID (12D3KooW…): the node signs in there only"
        " (default: the one the remote gives)",
    )
    p.add_argument("--transport", choices=["ws", "http"], help="WebSocket (default) or HTTP")
    p.add_argument("--cafile", help="trust this CA certificate for an https/wss remote")
    p.add_argument("--insecure", action="store_true", help="do not verify the remote's TLS")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up when the node reports nothing for this long (default 300)",
    )
    from loomdb.cli.p2p import add_p2p_commands  # here: they import this module
    from loomdb.cli.trust import add_trust_commands

    add_trust_commands(groups, command)
    add_p2p_commands(groups, command)
    return client
