"""Queries over materialized values, compiled to SQL on the ``docs`` table.

A query is a list of filters (all must hold), a sort and a page::

    where = [{"field": "age", "op": "gte", "value": 18},
             {"field": "tags", "op": "contains", "value": "admin"}]
    sort = [{"field": "age", "order": "desc"}]

Operators: ``eq ne lt lte gt gte in contains exists``. Fields are dotted paths.
``lt``…``gte`` compare numbers with numbers and strings with strings only.
``contains`` holds when a list has the value as an element or a string has it
as a substring. ``ne`` also matches documents without the field.

A path made of identifier-like names is written into the SQL as a literal so
SQLite can use an expression index on it (``CREATE INDEX … json_extract(value,
'$."age"')``); any other path is bound as a parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from loomdb.documents.values import check_path, check_value
from loomdb.errors import QueryError, ValidationError

OPS: Final = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "exists")
MAX_LIMIT: Final = 10_000
MAX_FILTERS: Final = 32
MAX_IN: Final = 1000
_SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,15}\Z")
_CMP = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_SQL_OPS = {"eq": "=", **_CMP}


def is_indexable(path: str) -> bool:
    return bool(_SAFE.match(path))


def json_path(path: str) -> str:
    return "$" + "".join(f'."{part}"' for part in path.split("."))


def _bound_path(path: str) -> str:
    return json_path(path.replace('"', '\\"'))


def _json_fn_sql(fn: str, path: str, params: list[Any]) -> str:
    if is_indexable(path):
        return f"{fn}(value, '{json_path(path)}')"
    params.append(_bound_path(path))
    return f"{fn}(value, ?)"


def path_sql(path: str, params: list[Any]) -> str:
    """The SQL expression reading ``path`` from ``value`` (literal when indexable)."""
    return _json_fn_sql("json_extract", path, params)


def _type_sql(path: str, params: list[Any]) -> str:
    return _json_fn_sql("json_type", path, params)


@dataclass(frozen=True, slots=True)
class Filter:
    field: str
    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Sort:
    field: str
    descending: bool = False


def _scalar(value: Any, where: str) -> None:
    if value is not None and type(value) not in (str, int, float, bool):
        raise QueryError(f"{where}: compare with a string, number, boolean or null")
    try:
        check_value(value, where)
    except ValidationError as exc:
        raise QueryError(exc.message) from exc


def parse_filters(where: object) -> list[Filter]:
    if where is None:
        return []
    if not isinstance(where, Sequence) or isinstance(where, str | bytes):
        raise QueryError("'where' must be a list of {field, op, value} filters")
    if len(where) > MAX_FILTERS:
        raise QueryError(f"at most {MAX_FILTERS} filters")
    out = []
    for i, raw in enumerate(where):
        item = raw
        if isinstance(raw, Filter):
            item = {"field": raw.field, "op": raw.op, "value": raw.value}
        if not isinstance(item, Mapping) or set(item) - {"field", "op", "value"}:
            raise QueryError(f"filter {i}: use {{'field': …, 'op': …, 'value': …}}")
        try:
            path = check_path(item.get("field"))
        except ValidationError as exc:
            raise QueryError(f"filter {i}: {exc.message}") from exc
        op = item.get("op", "eq")
        if op not in OPS:
            raise QueryError(f"filter {i}: unknown operator {op!r}; known: {', '.join(OPS)}")
        value = item.get("value")
        if op == "in":
            if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_IN:
                raise QueryError(f"filter {i}: 'in' takes a list of 1-{MAX_IN} values")
            for v in value:
                _scalar(v, f"filter {i}")
        elif op == "exists":
            if type(value) is not bool:
                value = True if value is None else value
            if type(value) is not bool:
                raise QueryError(f"filter {i}: 'exists' takes true or false")
        elif op in _CMP:
            if type(value) not in (int, float, str):
                raise QueryError(f"filter {i}: '{op}' compares with a number or a string")
            _scalar(value, f"filter {i}")
        else:
            _scalar(value, f"filter {i}")
        out.append(Filter(path, op, tuple(value) if isinstance(value, list | tuple) else value))
    return out


def parse_sort(sort: object) -> list[Sort]:
    if sort is None:
        return []
    if isinstance(sort, str):
        sort = [sort]
    if not isinstance(sort, Sequence):
        raise QueryError("'sort' must be a list of {field, order}")
    out = []
    for i, raw in enumerate(sort):
        item = raw
        if isinstance(raw, Sort):
            out.append(raw)
            continue
        if isinstance(raw, str):
            name, _, order = raw.partition(":")
            item = {"field": name, "order": order or "asc"}
        if not isinstance(item, Mapping) or set(item) - {"field", "order"}:
            raise QueryError(f"sort {i}: use {{'field': …, 'order': 'asc'|'desc'}}")
        order = item.get("order", "asc")
        if order not in ("asc", "desc"):
            raise QueryError(f"sort {i}: order must be 'asc' or 'desc'")
        try:
            path = check_path(item.get("field"))
        except ValidationError as exc:
            raise QueryError(f"sort {i}: {exc.message}") from exc
        out.append(Sort(path, order == "desc"))
    return out


MAX_OFFSET = (1 << 63) - 1  # what SQLite's INTEGER holds


def check_page(limit: object, offset: object) -> tuple[int, int]:
    if type(limit) is not int or not 0 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be an integer from 0 to {MAX_LIMIT}")
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise QueryError(f"offset must be an integer from 0 to {MAX_OFFSET}")
    return limit, offset


def _value_param(value: Any) -> Any:
    # json_extract returns 1/0 for true/false.
    return int(value) if type(value) is bool else value


def filter_sql(f: Filter, params: list[Any]) -> str:
    if f.op == "exists":
        expr = _type_sql(f.field, params)
        return f"{expr} IS {'NOT ' if f.value else ''}NULL"
    if f.op in ("eq", "ne") and (f.value is None or type(f.value) is bool):
        want = "null" if f.value is None else ("true" if f.value else "false")
        expr = _type_sql(f.field, params)
        return f"{expr} {'IS' if f.op == 'eq' else 'IS NOT'} '{want}'"
    if f.op in _SQL_OPS:  # numbers compare with numbers, strings with strings
        expr = path_sql(f.field, params)
        params.append(f.value)
        kind = "'text'" if type(f.value) is str else "'integer','real'"
        return f"{expr} {_SQL_OPS[f.op]} ? AND {_type_sql(f.field, params)} IN ({kind})"
    if f.op == "ne":
        expr = path_sql(f.field, params)
        params.append(f.value)
        return f"({expr} IS NOT ? OR {_type_sql(f.field, params)} NOT IN ('text','integer','real'))"
    if f.op == "in":
        expr = path_sql(f.field, params)
        params.extend(_value_param(v) for v in f.value)
        return f"{expr} IN ({','.join('?' * len(f.value))})"
    # contains: an element of a list, or a substring of a string
    kind = _type_sql(f.field, params)
    each = "json_each(docs.value, ?) AS item"
    params += [_bound_path(f.field), _value_param(f.value)]
    text = path_sql(f.field, params)
    params.append(f.value if type(f.value) is str else "\x00never")
    return (
        f"(CASE {kind} WHEN 'array' THEN EXISTS (SELECT 1 FROM {each} WHERE item.value = ?) "
        f"WHEN 'text' THEN instr({text}, ?) > 0 ELSE 0 END)"
    )


def order_sql(sorts: Sequence[Sort], params: list[Any], filtered: bool = False) -> str:
    """ORDER BY terms; ties (and unsorted results) go by document id.

    When a filter is on an indexed field (``filtered``), the id term is written
    ``+name`` so it cannot steer SQLite (which has no statistics here) into
    walking the id index to skip a sort instead of using the field's index.
    """
    terms = [f"{path_sql(s.field, params)} {'DESC' if s.descending else 'ASC'}" for s in sorts]
    return ", ".join([*terms, "+name ASC" if filtered else "name ASC"])
