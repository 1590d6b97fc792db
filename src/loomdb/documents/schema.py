"""Collection schemas: field names, types and which are required. JSON form::

    {"fields": {"title": {"type": "string", "required": true},
                "age": "int",
                "body": {"type": "text"},
                "likes": {"type": "counter"}},
     "additional": true,
     "indexes": ["age"]}

Types: ``string int float number bool null bytes map list text counter any``.
``text`` and ``counter`` fields read back as ``str`` and numbers; a plain value
written to such a field is turned into a text / counter. ``additional: false``
refuses fields the schema does not name. ``indexes`` lists fields to index.
A schema is stored as entries of the collection's ``$schema`` document, so it
syncs with the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from loomdb.documents.model import Counter, Text
from loomdb.documents.values import Increment, check_key, check_path
from loomdb.errors import SchemaError, ValidationError

TYPES: Final = (
    "string",
    "int",
    "float",
    "number",
    "bool",
    "null",
    "bytes",
    "map",
    "list",
    "text",
    "counter",
    "any",
)
MAX_FIELDS: Final = 1024


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    required: bool = False


def _matches(kind: str, value: Any) -> bool:
    t = type(value)
    if kind == "any":
        return True
    if kind in ("string", "text"):
        return t is str
    if kind == "int":
        return t is int
    if kind == "float":
        return t is float
    if kind in ("number", "counter"):
        return t in (int, float)
    if kind == "bool":
        return t is bool
    if kind == "null":
        return value is None
    if kind == "bytes":
        return t is bytes
    if kind == "map":
        return t is dict
    return kind == "list" and t is list


@dataclass(frozen=True, slots=True)
class Schema:
    fields: tuple[Field, ...]
    additional: bool = True
    indexes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: object) -> Schema:
        """Parse the JSON form; a malformed schema raises :class:`SchemaError`."""
        if not isinstance(data, Mapping):
            raise SchemaError("a schema is a JSON object with 'fields'")
        unknown = set(data) - {"fields", "additional", "indexes"}
        if unknown:
            raise SchemaError(f"unknown schema keys: {sorted(unknown)}")
        raw_fields = data.get("fields", {})
        if not isinstance(raw_fields, Mapping) or len(raw_fields) > MAX_FIELDS:
            raise SchemaError(f"'fields' must be an object of at most {MAX_FIELDS} fields")
        fields = []
        for name, given in raw_fields.items():
            try:
                check_key(name)
            except ValidationError as exc:
                raise SchemaError(exc.message) from exc
            spec = {"type": given} if type(given) is str else given
            if not isinstance(spec, Mapping) or set(spec) - {"type", "required"}:
                raise SchemaError(f"field {name!r}: use {{'type': …, 'required': …}}")
            kind = spec.get("type", "any")
            if kind not in TYPES:
                raise SchemaError(f"field {name!r}: unknown type {kind!r}; known: {TYPES}")
            required = spec.get("required", False)
            if type(required) is not bool:
                raise SchemaError(f"field {name!r}: 'required' must be true or false")
            fields.append(Field(name, kind, required))
        additional = data.get("additional", True)
        if type(additional) is not bool:
            raise SchemaError("'additional' must be true or false")
        indexes = data.get("indexes", [])
        if not isinstance(indexes, list):
            raise SchemaError("'indexes' must be a list of field paths")
        try:
            checked = tuple(check_path(i) for i in indexes)
        except ValidationError as exc:
            raise SchemaError(exc.message) from exc
        return cls(tuple(fields), additional, checked)

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {f.name: {"type": f.type, "required": f.required} for f in self.fields},
            "additional": self.additional,
            "indexes": list(self.indexes),
        }

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def coerce(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Turn plain values of ``text`` / ``counter`` fields into Text / Counter."""
        out = dict(fields)
        for f in self.fields:
            value = out.get(f.name)
            if f.type == "text" and type(value) is str:
                out[f.name] = Text(value)
            elif f.type == "counter" and isinstance(value, int | float):
                out[f.name] = Counter(value)
        return out

    def check_write(self, fields: Mapping[str, Any]) -> None:
        """Refuse wrappers written to fields of another type (a Text into an int)."""
        for name, value in fields.items():
            f = self.field(name)
            if f is None:
                continue
            if isinstance(value, Text) and f.type not in ("text", "any"):
                raise SchemaError(f"field {name!r} is {f.type}, not text")
            if isinstance(value, Counter | Increment) and f.type not in ("counter", "any"):
                raise SchemaError(f"field {name!r} is {f.type}, not a counter")

    def validate(self, value: Mapping[str, Any]) -> None:
        """Raise :class:`SchemaError` naming the first field that breaks the schema."""
        for f in self.fields:
            if f.name not in value:
                if f.required:
                    raise SchemaError(f"field {f.name!r} is required")
                continue
            if not _matches(f.type, value[f.name]):
                got = type(value[f.name]).__name__
                raise SchemaError(f"field {f.name!r} must be {f.type}, got {got}")
        if not self.additional:
            extra = sorted(set(value) - {f.name for f in self.fields})
            if extra:
                raise SchemaError(f"fields not in the schema: {extra}")
