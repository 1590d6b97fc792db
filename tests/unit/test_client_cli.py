"""`loomdb client`: argument parsing, every command's help, and API errors as LoomErrors."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import pytest

from loomdb.cli.client import ApiClient, UnreachableError, sort_arg, where_arg
from loomdb.cli.main import EXIT_CODES, build_parser, exit_code
from loomdb.errors import (
    ConflictError,
    LoomError,
    NotFoundError,
    SchemaError,
    StoreError,
    ValidationError,
)


@pytest.mark.parametrize(
    ("text", "condition"),
    [
        ("age>3", {"field": "age", "op": "gt", "value": 3}),
        ("age >= 3.5", {"field": "age", "op": "gte", "value": 3.5}),
        ("name=Ada", {"field": "name", "op": "eq", "value": "Ada"}),
        ('name=="3"', {"field": "name", "op": "eq", "value": "3"}),
        ("ok!=true", {"field": "ok", "op": "ne", "value": True}),
        ("a.b<=null", {"field": "a.b", "op": "lte", "value": None}),
        ("tags contains x", {"field": "tags", "op": "contains", "value": "x"}),
        ("age in [1, 2]", {"field": "age", "op": "in", "value": [1, 2]}),
        ("email exists", {"field": "email", "op": "exists", "value": True}),
        ("email exists false", {"field": "email", "op": "exists", "value": False}),
        ("note=a = b", {"field": "note", "op": "eq", "value": "a = b"}),
        ('{"field": "x", "op": "eq", "value": 1}', {"field": "x", "op": "eq", "value": 1}),
    ],
)
def test_where_conditions(text: str, condition: dict[str, Any]) -> None:
    assert where_arg(text) == [condition]


def test_where_as_a_json_list() -> None:
    conditions = [{"field": "a", "op": "gt", "value": 1}, {"field": "b", "op": "exists"}]
    assert where_arg(json.dumps(conditions)) == conditions


@pytest.mark.parametrize("text", ["age", "", ">3", "[1, 2]", "{bad", "age between 1 2 3x"])
def test_bad_where(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        where_arg(text)


def test_sort_keys() -> None:
    assert sort_arg("age") == {"field": "age", "order": "asc"}
    assert sort_arg("age:desc") == {"field": "age", "order": "desc"}
    for bad in ("", ":desc", "age:down"):
        with pytest.raises(argparse.ArgumentTypeError):
            sort_arg(bad)


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Any]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaves(sub, (*path, name))
            return found
    return [(path, parser)]


def test_every_client_command_has_help_url_and_json() -> None:
    leaves = [(p, sub) for p, sub in _leaves(build_parser()) if p[0] == "client"]
    names = {" ".join(p) for p, _ in leaves}
    assert names == {
        "client node",
        "client collection add",
        "client collection get",
        "client collection list",
        "client doc create",
        "client doc get",
        "client doc update",
        "client doc delete",
        "client doc list",
        "client doc query",
        "client doc history",
        "client doc import",
        "client sync",
        "client identity",
        *(
            f"client space {c}"
            for c in [
                "create",
                "list",
                "join",
                "users",
                "invite",
                "revoke",
                "grant",
                "ungrant",
                "rotate",
                "invitation",
            ]
        ),
        *(f"client p2p {c}" for c in ["info", "peers", "connect", "disconnect", "ticket"]),
        *(f"client p2p replicator {c}" for c in ["set", "delete", "getall"]),
        *(f"client p2p collection {c}" for c in ["add", "remove", "getall"]),
        *(f"client p2p document {c}" for c in ["add", "remove", "getall", "sync"]),
    }
    for _, sub in leaves:
        assert sub.description
        options = {s for a in sub._actions for s in a.option_strings}
        assert {"--url", "--json"} <= options


def _api(handler: Any) -> ApiClient:
    return ApiClient("http://node.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (404, "document.not_found", NotFoundError),
        (409, "document.conflict", ConflictError),
        (422, "document.schema", SchemaError),
        (422, "validation", ValidationError),
        (400, "request.json", ValidationError),  # the API's own codes: by status
        (500, "store", StoreError),
        (500, "internal", LoomError),
    ],
)
def test_api_errors_come_back_as_loom_errors(
    status: int, code: str, error: type[LoomError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": "nope"}})

    with _api(handler) as api, pytest.raises(LoomError) as info:
        api.call("GET", "/node")
    assert type(info.value) is error
    assert info.value.message == "nope"


def test_unreachable_and_foreign_servers() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    for handler, fragment in [(refuse, "connection refused"), (slow, "no answer"),
                              (html, "without JSON")]:  # fmt: skip
        with _api(handler) as api, pytest.raises(UnreachableError, match=fragment) as info:
            api.call("GET", "/node")
        assert exit_code(info.value) == 7


def test_requests_go_to_the_api_prefix_with_quoted_segments() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    with _api(handler) as api:
        assert api.call("DELETE", "/collections/a%20b/docs/x", limit=None) is None
    assert seen == ["http://node.test/api/v0/collections/a%20b/docs/x"]


def test_exit_codes_are_one_per_family() -> None:
    codes = dict(EXIT_CODES)
    assert len(set(codes.values())) == len(codes)
    assert exit_code(NotFoundError("x")) == 8
    assert exit_code(SchemaError("x")) == 9
    assert exit_code(ConflictError("x")) == 9


# --- where the client's options go ---------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["client", "--url", "http://b:1", "--space", "s~1", "--json", "doc", "list", "c"],
        ["client", "doc", "list", "c", "--url", "http://b:1", "--space", "s~1", "--json"],
        ["client", "--json", "doc", "list", "--url", "http://b:1", "c", "--space", "s~1"],
    ],
)
def test_client_options_before_or_after_the_command(argv: list[str]) -> None:
    args = _parse(*argv)
    assert (args.url, args.space, args.json, args.collection) == ("http://b:1", "s~1", True, "c")


def test_the_command_s_option_wins_and_defaults_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse("client", "--url", "http://a:1", "--space", "a~1", "node", "--url", "http://b:1")
    assert (args.url, args.space, args.json) == ("http://b:1", "a~1", False)
    args = _parse("client", "--space", "x~1", "space", "users", "x~1", "--space", "y~2")
    assert args.space == "y~2"
    args = _parse("client", "sync", "http://r:1")
    assert (args.url, args.space, args.json) == ("http://127.0.0.1:9181", None, False)
    monkeypatch.setenv("LOOMDB_URL", "http://env:1")
    assert _parse("client", "doc", "list", "c").url == "http://env:1"
    assert _parse("client", "--url", "http://a:1", "doc", "list", "c").url == "http://a:1"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["client", "doc", "craete", "c"], ["loomdb client doc: error", "did you mean 'create'"]),
        (["client", "doc", "list", "c", "--limt", "3"],
         ["loomdb client doc list: error", "--limt", "did you mean --limit?"]),
        (["client", "doc", "list", "c", "--lim", "3"], ["unrecognized", "--lim"]),  # no prefixes
        (["client", "doc", "query", "c", "--where", "age>"], ["--where", "cannot read"]),
        (["client", "doc", "query", "c", "--where", "age between 1 2"], ["cannot read"]),
        (["client", "colection", "list"], ["did you mean 'collection'"]),
        (["init", "--jsn"], ["loomdb init: error", "did you mean --json?"]),
    ],
)  # fmt: skip
def test_typos_are_reported_by_their_command(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_every_command_has_json() -> None:
    parser = build_parser()
    for path, sub in _leaves(parser):
        options = {s for a in sub._actions for s in a.option_strings}
        assert "--json" in options, path
