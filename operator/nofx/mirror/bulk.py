"""Many rows in one statement: the rows travel as one JSON array, which Postgres turns back into
rows of the table's own column types (jsonb_populate_recordset), so the types are written once,
in the migrations. executemany sends each row, and reads its answer, on its own: under load it
was 7 % of the operator's CPU samples (py-spy, 150 Runs at once).

A value a column cannot hold is refused by Postgres with its own words, as before (a DataError);
only the columns named are sent."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import sql


class Insert:
    """INSERT of the named columns of many rows; `then` is the rest of the statement (its
    conflict clause, whose %(name)s parameters execute takes), which may name the table by its
    alias."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        then: str = "ON CONFLICT DO NOTHING",
        alias: str = "",
    ) -> None:
        self.columns = tuple(columns)
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        self.statement = sql.SQL(
            "INSERT INTO {table}{alias} ({names}) SELECT {names}"
            " FROM jsonb_populate_recordset(NULL::{table}, {rows}::jsonb) {then}"
        ).format(
            table=sql.Identifier(table),
            alias=sql.SQL(f" AS {alias}" if alias else ""),  # type: ignore[arg-type]
            names=names,
            rows=sql.Placeholder("rows"),
            then=sql.SQL(then),  # type: ignore[arg-type]  # our own constant text
        )

    def execute(
        self, cur: psycopg.Cursor[Any], rows: Sequence[Mapping[str, Any]], **parameters: Any
    ) -> None:
        """Writes the rows' values of the columns (a row's other keys are not sent)."""
        values = [{column: row[column] for column in self.columns} for row in rows]
        cur.execute(self.statement, {"rows": as_json(values), **parameters})


def as_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a JSON array: times in ISO 8601 with their offset, Decimals as their exact
    text (a JSON number would pass through a double)."""
    try:
        return orjson.dumps(rows, default=_plain).decode()
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits: written as it is, for Postgres to refuse with its words.
        return json.dumps(rows, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):  # orjson writes it by itself; the standard library not
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")
