"""Reversible escaping of what Postgres cannot hold: NUL in text, and in jsonb strings and keys
(jsonb refuses `\\u0000` too). Pure functions.

The escape character is U+2400 SYMBOL FOR NULL (␀): a NUL is stored as "␀0" and a ␀ of the
original as "␀␀"; nothing else changes, so a value without either is stored as it is. The hash
chain covers the stored (escaped) form: `nofx audit verify` recomputes it from the stored
columns alone, and reads (`nofx audit`, history, rollback) unescape.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

ESCAPE = "\u2400"
_NEEDS_ESCAPE = re.compile("[\x00\u2400]")
_ESCAPED = re.compile("\u2400(.)", re.DOTALL)
_UNESCAPED = {"0": "\x00", ESCAPE: ESCAPE}

Record = TypeVar("Record")


def escape(text: str) -> str:
    if not _NEEDS_ESCAPE.search(text):
        return text
    return _NEEDS_ESCAPE.sub(lambda m: ESCAPE + ("0" if m.group() == "\x00" else ESCAPE), text)


def unescape(text: str) -> str:
    if ESCAPE not in text:
        return text
    # "␀" followed by anything else was not written by escape(): left as it is.
    return _ESCAPED.sub(lambda m: _UNESCAPED.get(m.group(1), m.group()), text)


def escape_json(value: Any) -> Any:
    """Every string of a JSON value, keys included."""
    return _map_json(value, escape)


def unescape_json(value: Any) -> Any:
    return _map_json(value, unescape)


def escape_fields(record: Record) -> Record:
    """A dataclass with its string fields escaped (the same object when none needs it)."""
    changes = {
        field.name: escape(value)
        for field in dataclasses.fields(record)  # type: ignore[arg-type]
        if isinstance(value := getattr(record, field.name), str) and _NEEDS_ESCAPE.search(value)
    }
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[type-var]


def unescape_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as read back, with its text columns unescaped."""
    return {key: unescape(value) if isinstance(value, str) else value for key, value in row.items()}


def _map_json(value: Any, convert: Any) -> Any:
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, dict):
        return {convert(key): _map_json(item, convert) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_json(item, convert) for item in value]
    return value
