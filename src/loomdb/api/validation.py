"""Reading a request: a size-capped JSON body and a check against its schema.

The request schemas in the route table are what the OpenAPI document shows and
what :func:`check` enforces, so the two cannot drift. :func:`check` knows the
small subset of JSON Schema those schemas use: ``type``, ``properties``,
``required``, ``additionalProperties: false``, ``items``, ``maxItems``,
``minimum``, ``maximum``, ``minLength``, ``enum``. Anything deeper (a document's
value, a collection schema) is left to the database, which checks it itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from loomdb.api.errors import (
    INVALID_REQUEST,
    MALFORMED_JSON,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    RequestError,
)

Schema = Mapping[str, Any]

MAX_BODY_BYTES = 4 * 1024 * 1024
JSON_MEDIA_TYPE = "application/json"
MAX_JSON_DEPTH = 64
"""Containers nested deeper are refused before anything walks them recursively
(a document's values nest at most 32 levels)."""
DRAIN_BYTES = 16 * 1024 * 1024  # how much of a refused body is read (and dropped) at most

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with any option builds a new decoder for every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _loads(body: bytes) -> Any:
    """``json.loads(body, parse_constant=_refuse_constant)``, the same steps."""
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with a 413 as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(request, limit)
        raise _too_large(limit)
    # A chunked body has no length to check first. Read as Request.stream() would
    # (http.disconnect is ClientDisconnect), without a generator per request.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                await _drain(request, limit)
                raise _too_large(limit)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(request: Request, limit: int) -> None:
    """Read and drop the rest of a refused body, up to :data:`DRAIN_BYTES` (or twice
    ``limit``) in all.

    A server that answers 413 and closes while the body is still coming resets
    the connection, and the client sees that instead of the 413. A body larger
    still is not worth reading: that client gets the reset."""
    most = max(DRAIN_BYTES, 2 * limit)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > most:
        return
    seen = 0
    while seen <= most:
        message = await request.receive()
        if message["type"] != "http.request":
            return  # the client went away
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def require_json(request: Request, limit: int = MAX_BODY_BYTES) -> None:
    """415 unless the request says ``Content-Type: application/json``.

    A web page can send a cross-origin ``text/plain``, form or multipart POST
    without asking first (no CORS preflight), but not a JSON one: so a JSON
    route that takes only JSON cannot be driven by a page. The body of a refused
    request is drained first, so the client sees the 415, not a reset."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        await _drain(request, limit)
        shown = media_type or "none"
        raise RequestError(
            415, UNSUPPORTED_MEDIA_TYPE, f"send the body as {JSON_MEDIA_TYPE} (got {shown})"
        )


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's body parsed as JSON; 415 unless it is sent as JSON, 413 past
    ``limit`` bytes, 400 if not JSON."""
    await require_json(request, limit)
    body = await read_body(request, limit)
    if not body.strip():
        raise RequestError(400, MALFORMED_JSON, "the request needs a JSON body")
    try:
        value = _loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, MALFORMED_JSON, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(
            400, MALFORMED_JSON, f"the body is nested deeper than {MAX_JSON_DEPTH} levels"
        )
    return value


def _depth(value: Any) -> int:
    """How deep ``value``'s containers nest, without recursion (so without limit).
    Stops looking past :data:`MAX_JSON_DEPTH`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest if isinstance(value, dict | list) else 0


def _too_large(limit: int) -> RequestError:
    return RequestError(413, TOO_LARGE, f"the body is larger than {limit} bytes")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for name in ("object", "array", "string", "integer", "number"):
        if isinstance(value, _JSON_TYPES[name]):
            return name
    return type(value).__name__


def _is(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in ("integer", "number"):
        return False  # JSON true is not 1
    return isinstance(value, _JSON_TYPES[type_name])


def check(schema: Schema, value: Any, where: str = "body") -> None:
    """Raise a 400 :class:`RequestError` unless ``value`` fits ``schema``."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, name) for name in names):
            expected = " or ".join(names)
            raise _invalid(f"{where}: expected {expected}, got {_type_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(json.dumps(v) for v in schema["enum"])
        raise _invalid(f"{where}: must be one of {options}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise _invalid(f"{where}: must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise _invalid(f"{where}: must be at most {schema['maximum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        raise _invalid(f"{where}: must not be empty")
    if isinstance(value, dict):
        properties: Schema = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise _invalid(f"{where}: missing {name!r}")
        for name, item in value.items():
            if name in properties:
                check(properties[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties", True) is False:
                known = ", ".join(properties) or "none"
                raise _invalid(f"{where}: unknown field {name!r} (known: {known})")
    if isinstance(value, list) and len(value) > schema.get("maxItems", len(value)):
        raise _invalid(f"{where}: at most {schema['maxItems']} items, got {len(value)}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(schema["items"], item, f"{where}[{i}]")


def parse_query(params: Iterable[tuple[str, str]], schemas: Mapping[str, Schema]) -> dict[str, Any]:
    """Query parameters converted (integers) and checked; unknown or repeated ones refused."""
    out: dict[str, Any] = {}
    for name, text in params:
        schema = schemas.get(name)
        if schema is None:
            known = ", ".join(schemas) or "none"
            raise _invalid(f"unknown query parameter {name!r} (known: {known})")
        if name in out:
            raise _invalid(f"query parameter {name} is given twice")
        value: Any = text
        if schema.get("type") == "integer":
            try:
                value = int(text)
            except ValueError:
                raise _invalid(f"query parameter {name}: not a whole number: {text!r}") from None
        check(schema, value, f"query parameter {name}")
        out[name] = value
    for name, schema in schemas.items():
        if name not in out and "default" in schema:
            out[name] = schema["default"]
    return out


def _invalid(message: str) -> RequestError:
    return RequestError(400, INVALID_REQUEST, message)
