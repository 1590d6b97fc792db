"""Document values: checking them, writing them into Loro, reading them back, JSON.

A document is a Loro map (the root container ``"root"``). Plain values are
last-writer-wins registers; ``dict`` values become nested maps (a patch merges
into them), ``list`` values become lists (a patch replaces a list whole),
:class:`Text` a collaborative text, :class:`Counter` a counter.

Writing a ``str`` to a field that already holds a text edits the text (a diff,
so concurrent edits of other parts survive); writing a number to a counter
increments it by the difference; :class:`Increment` (``{"$inc": n}`` in JSON)
increments it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import loro

from loomdb.documents.model import Counter, Document, Text
from loomdb.errors import ValidationError

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
MAX_DEPTH: Final = 32
MAX_KEY_CHARS: Final = 256
ROOT: Final = "root"


@dataclass(frozen=True, slots=True)
class Increment:
    """In a patch: add ``by`` to a counter field (creating it when missing)."""

    by: int | float = 1


def check_key(key: object, path: str = "") -> str:
    if type(key) is not str or not key or len(key) > MAX_KEY_CHARS:
        raise ValidationError(f"field names must be strings of 1-{MAX_KEY_CHARS} chars ({path!r})")
    if key.startswith("$") or "." in key or not key.isprintable():
        raise ValidationError(
            f"field name {key!r}: must not start with '$', contain '.' or control characters"
        )
    return key


def _number(value: object, where: str) -> int | float:
    if type(value) is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(f"{where}: integer out of the 64-bit range")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise ValidationError(f"{where}: NaN and infinities are not stored")
        return value
    raise ValidationError(f"{where}: expected a number, got {type(value).__name__}")


def check_value(value: object, where: str = "value", depth: int = 0) -> None:
    """Raise :class:`ValidationError` unless ``value`` can be stored."""
    if depth > MAX_DEPTH:
        raise ValidationError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (str, bool, bytes):
        return
    if type(value) in (int, float):
        _number(value, where)
    elif isinstance(value, Mapping):
        leaf = depth < MAX_DEPTH  # a plain field one level down is checked here, in line
        for k, v in value.items():
            check_key(k, where)
            t = type(v)
            if leaf and (v is None or t is str or t is bool or t is bytes):
                continue
            if leaf and t is int and INT64_MIN <= v <= INT64_MAX:
                continue
            if leaf and t is float and math.isfinite(v):
                continue
            check_value(v, f"{where}.{k}", depth + 1)  # (the name is made only when needed)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if isinstance(v, Text | Counter | Increment):
                raise ValidationError(f"{where}[{i}]: text and counters live in map fields")
            check_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, Text):
        if type(value.value) is not str:
            raise ValidationError(f"{where}: text must hold a string")
    elif isinstance(value, Counter | Increment):
        _number(value.value if isinstance(value, Counter) else value.by, where)
    else:
        raise ValidationError(f"{where}: cannot store a {type(value).__name__}")


# --- writing into Loro ------------------------------------------------------
# Containers are typed Any here: Loro's stubs return a union of every container
# type from insert_container, and its constructors are unannotated.


def _new(kind: str) -> Any:
    return getattr(loro, kind)()


def _fill_list(target: Any, items: Sequence[Any]) -> None:
    for item in items:
        if isinstance(item, Mapping):
            _fill_map(target.push_container(_new("LoroMap")), item)
        elif isinstance(item, list | tuple):
            _fill_list(target.push_container(_new("LoroList")), item)
        else:
            target.push(item)


def _fill_map(target: Any, fields: Mapping[str, Any]) -> None:
    for key, item in fields.items():
        set_field(target, key, item)


_PLAIN: Final = (str, int, float, bool, bytes, type(None))
_SCALARS: Final = frozenset(_PLAIN)


def fill_new_map(target: Any, fields: Mapping[str, Any]) -> None:
    """``set_field`` for each field of a map that has no field yet: a plain value
    goes in as it is, without asking Loro what the field holds (nothing)."""
    for key, item in fields.items():
        if type(item) in _PLAIN:
            target.insert(key, item)
        else:
            set_field(target, key, item)


def container_at(target: Any, key: str) -> Any:
    got = target.get(key)
    # ``is_container`` is not reliable on these objects; the variant's type is.
    if not isinstance(got, loro.ValueOrContainer.Container):
        return None
    return got.container


def set_field(target: Any, key: str, value: Any) -> None:
    """Write one field of a map, with the merge rules in the module docstring."""
    current = container_at(target, key)
    if isinstance(value, Increment):
        counter: Any = current if isinstance(current, loro.LoroCounter) else None
        if counter is None:
            counter = target.insert_container(key, _new("LoroCounter"))
        counter.increment(value.by)
    elif isinstance(value, Counter):
        if isinstance(current, loro.LoroCounter):
            delta = value.value - current.value
            if delta:
                current.increment(delta)
        else:
            counter = target.insert_container(key, _new("LoroCounter"))
            if value.value:
                counter.increment(value.value)
    elif isinstance(value, Text) or (type(value) is str and isinstance(current, loro.LoroText)):
        text = value.value if isinstance(value, Text) else value
        if isinstance(current, loro.LoroText):
            current.update(text)
        else:
            target.insert_container(key, _new("LoroText")).insert(0, text)
    elif type(value) in (int, float) and isinstance(current, loro.LoroCounter):
        delta = value - current.value
        if delta:
            current.increment(delta)
    elif isinstance(value, Mapping):
        if isinstance(current, loro.LoroMap):
            _fill_map(current, value)
        else:
            fill_new_map(target.insert_container(key, _new("LoroMap")), value)
    elif isinstance(value, list | tuple):
        _fill_list(target.insert_container(key, _new("LoroList")), value)
    else:
        target.insert(key, value)


def apply_patch(root: Any, patch: Mapping[str, Any], unset: Sequence[str] = ()) -> None:
    for key, value in patch.items():
        set_field(root, key, value)
    for path in unset:
        parts = path.split(".")
        target: Any = root
        for part in parts[:-1]:
            target = container_at(target, part)
            if not isinstance(target, loro.LoroMap):
                break
        else:
            if target.get(parts[-1]) is not None:
                target.delete(parts[-1])


# --- predicting the result of a patch (for the schema check before writing) --


def preview_patch(
    current: Mapping[str, Any], patch: Mapping[str, Any], unset: Sequence[str] = ()
) -> dict[str, Any]:
    """The plain value a document will have after ``apply_patch`` on this replica."""
    result = dict(current)
    for key, value in patch.items():
        result[key] = _preview(result.get(key), value)
    for path in unset:
        parts = path.split(".")
        target: Any = result
        for part in parts[:-1]:
            nxt = target.get(part) if isinstance(target, dict) else None
            if not isinstance(nxt, dict):
                break
            nxt = dict(nxt)
            target[part] = nxt
            target = nxt
        else:
            if isinstance(target, dict):
                target.pop(parts[-1], None)
    return result


def _preview(old: Any, value: Any) -> Any:
    if type(value) in _SCALARS:  # most fields: no wrapper to look for
        return value
    if isinstance(value, Increment):
        return (old if type(old) in (int, float) else 0) + value.by
    if isinstance(value, Text | Counter):
        return value.value
    if isinstance(value, Mapping):
        merged = dict(old) if isinstance(old, dict) else {}
        for k, v in value.items():
            merged[k] = _preview(merged.get(k), v)
        return merged
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return plain(value)


def plain(value: Any) -> Any:
    """``value`` with wrappers replaced by what reading it back gives."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Text | Counter):
        return value.value
    if isinstance(value, Increment):
        return value.by
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# --- reading back -------------------------------------------------------------


def _unwrap(node: Any) -> Any:
    # get_deep_value_with_id wraps every container as {"value": …, "cid": "cid:…:Kind"}.
    if isinstance(node, dict):
        if len(node) == 2 and "cid" in node and "value" in node and type(node["cid"]) is str:
            inner = node["value"]
            if node["cid"].endswith(":Counter") and type(inner) is float:
                return int(inner) if inner.is_integer() and abs(inner) < 2**53 else inner
            return _unwrap(inner)
        # Plain values (most fields) are taken as they are, without a call each.
        return {k: _unwrap(v) if type(v) in _NESTED else v for k, v in node.items()}
    if isinstance(node, list):
        return [_unwrap(v) if type(v) in _NESTED else v for v in node]
    return node


_NESTED: Final = frozenset((dict, list))  # what Loro's deep values nest (it makes no subclasses)


def read_value(doc: loro.LoroDoc) -> dict[str, Any]:
    """The document's value: the root map as plain Python."""
    deep = doc.get_deep_value_with_id()
    root = deep.get(ROOT) if isinstance(deep, dict) else None
    value = _unwrap(root) if root is not None else {}
    return value if isinstance(value, dict) else {}


# --- JSON form ----------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Plain value → JSON-compatible value (bytes become ``{"$bytes": base64}``)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


_TAGS: Final = ("$bytes", "$text", "$counter", "$inc")
_JSON_SCALARS: Final = frozenset((str, int, float, bool, type(None)))  # from_json keeps them


def from_json(value: Any, where: str = "value") -> Any:
    """JSON value → value to write: decodes ``$bytes``, ``$text``, ``$counter``, ``$inc``."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag in _TAGS:
                return _tagged(tag, inner, where)
        for k in value:
            if type(k) is str and k.startswith("$"):
                raise ValidationError(f"{where}: unknown tag {k!r}; known: {', '.join(_TAGS)}")
        return {
            k: v if type(v) in _JSON_SCALARS else from_json(v, f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [from_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _tagged(tag: str, inner: Any, where: str) -> Any:
    if tag == "$bytes":
        if type(inner) is not str:
            raise ValidationError(f"{where}: $bytes must be a base64 string")
        try:
            return base64.b64decode(inner, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"{where}: $bytes is not valid base64") from exc
    if tag == "$text":
        if type(inner) is not str:
            raise ValidationError(f"{where}: $text must be a string")
        return Text(inner)
    number = _number(inner, where)
    return Counter(number) if tag == "$counter" else Increment(number)


def _bytes_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return to_json(value)
    raise TypeError(f"cannot store a {type(value).__name__}")


# One encoder for every call (json.dumps with options makes a new one each time).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_bytes_json)


def dumps(value: Any) -> str:
    """Compact JSON for storing a materialized value (what :func:`to_json` gives)."""
    return _ENCODER.encode(value)


def loads(text: str) -> dict[str, Any]:
    value = _from_stored(json.loads(text))
    return value if isinstance(value, dict) else {}


def _from_stored(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: _from_stored(v) if type(v) in _NESTED else v for k, v in value.items()}
    if isinstance(value, list):
        return [_from_stored(v) if type(v) in _NESTED else v for v in value]
    return value


def document_to_json(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "collection": doc.collection,
        "value": to_json(doc.value),
        "heads": list(doc.heads),
        "created_at": doc.created_at,
        "updated_at": doc.updated_at,
        "deleted": doc.deleted,
    }


_PATH = re.compile(
    r"[^.$\x00-\x1f][^.\x00-\x1f]{0,255}(\.[^.$\x00-\x1f][^.\x00-\x1f]{0,255}){0,15}\Z"
)


def check_path(path: object) -> str:
    """A dotted field path (``address.city``) for queries, sorts, indexes and unset."""
    if type(path) is not str or not _PATH.match(path):
        raise ValidationError(f"bad field path {path!r}: use dotted field names like 'a.b'")
    return path
