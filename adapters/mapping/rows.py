"""Reading stored-procedure replies: result sets and OUT values, addressed by column name.

A procedure answers with any number of result sets (a SQL Server procedure without ``SET NOCOUNT ON`` or a
MariaDB procedure with several ``SELECT``s) and OUT values. The adapter turns them into a :class:`RowsReply`
whose cells are already text (exact decimals, ``YYYY-MM-DD HH:MM:SS`` times), so that the profile's field
types convert them exactly as they convert XML text.

Paths, case-insensitive:

- ``column``: the first result set that has this column; its single row (no row: absent; several rows: an
  error, read them as a list instead);
- ``set[N].column``: the Nth result set (1-based; ``set[-1]`` is the last);
- ``out.NAME``: an OUT value;
- for ``lists``: ``set[N]`` or a column name selects every row of that result set, one list item per row.

Rules (``success``): ``status = 'T'``, ``code != '0'``, ``flag in T,1``, ``flag not in (F, 0)``,
``receipt_no is not null``, ``true``, combined with ``and`` / ``or`` (``and`` binds tighter). Literals are
compared as text with the cell's text.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from adapters.mapping.errors import MappingError


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[str, ...]
    """Lower-cased column names."""
    rows: list[tuple[str | None, ...]]

    def index(self, column: str) -> int | None:
        try:
            return self.columns.index(column)
        except ValueError:
            return None


@dataclass(frozen=True)
class RowsReply:
    """Everything one call answered, in order; ``out`` holds OUT values by lower-cased name."""

    sets: list[ResultSet]
    out: dict[str, str | None] = field(default_factory=dict)

    def text(self) -> str:
        """JSON for error reports and ``his-bridge try --send``."""
        return json.dumps(
            {
                "sets": [{"columns": list(s.columns), "rows": [list(r) for r in s.rows]} for s in self.sets],
                "out": self.out,
            },
            ensure_ascii=False,
        )


def cell_text(value: Any) -> str | None:
    """A database value as the text the profile's field types read; money stays exact."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") if value.tzinfo is None else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class ColumnPath:
    source: str
    column: str | None
    set_index: int | None = None
    out: bool = False


_PATH = re.compile(
    r"\s*(?:out\.(?P<out>[^\s.\[\]]+)|(?:set\[(?P<set>-?[0-9]+)\](?:\.(?P<col>[^\s.\[\]]+))?)|(?P<bare>[^\s.\[\]]+))\s*",
    re.IGNORECASE,
)


def parse_path(path: str) -> ColumnPath:
    match = _PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"column path is invalid: {path!r} (expected column, set[N].column, set[N] or out.NAME)")
    if match.group("out"):
        return ColumnPath(path, match.group("out").lower(), out=True)
    if match.group("set") is not None:
        index = int(match.group("set"))
        if index == 0:
            raise ValueError(f"column path is invalid: {path!r}: result sets are numbered from 1 (set[-1] is the last)")
        column = match.group("col")
        return ColumnPath(path, column.lower() if column else None, index)
    return ColumnPath(path, match.group("bare").lower())


# --- rules -------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|!=|<>|=|,|\(|\)|[^\s,=!<>()'\"]+)")


@dataclass(frozen=True)
class Condition:
    path: ColumnPath | None
    op: str
    values: tuple[str, ...] = ()

    def holds(self, record: RowRecord) -> bool:
        if self.op == "true":
            return True
        if self.op == "false":
            return False
        assert self.path is not None
        value = record.value(self.path)
        if self.op == "is null":
            return value is None
        if self.op == "is not null":
            return value is not None
        if value is None:
            return False
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values


@dataclass(frozen=True)
class Rule:
    source: str
    any_of: tuple[tuple[Condition, ...], ...]

    def holds(self, record: RowRecord) -> bool:
        return any(all(c.holds(record) for c in group) for group in self.any_of)


def _literal(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1].replace(token[0] * 2, token[0])
    return token


def parse_rule(rule: str) -> Rule:
    tokens = _tokenize(rule)
    groups: list[tuple[Condition, ...]] = []
    current: list[Condition] = []
    i = 0
    while i < len(tokens):
        condition, i = _condition(tokens, i, rule)
        current.append(condition)
        if i == len(tokens):
            break
        joiner = tokens[i].lower()
        if joiner == "and":
            pass
        elif joiner == "or":
            groups.append(tuple(current))
            current = []
        else:
            raise ValueError(f"rule is invalid: {rule!r}: expected and/or, got {tokens[i]!r}")
        i += 1
        if i == len(tokens):
            raise ValueError(f"rule is invalid: {rule!r}: ends with {joiner}")
    if not current:
        raise ValueError(f"rule is invalid: {rule!r}: empty")
    groups.append(tuple(current))
    return Rule(rule, tuple(groups))


def _tokenize(rule: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(rule):
        if rule[pos:].strip() == "":
            break
        match = _TOKEN.match(rule, pos)
        if match is None:
            raise ValueError(f"rule is invalid: {rule!r} near {rule[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _condition(tokens: list[str], i: int, rule: str) -> tuple[Condition, int]:
    head = tokens[i].lower()
    if head in ("true", "false") and (i + 1 == len(tokens) or tokens[i + 1].lower() in ("and", "or")):
        return Condition(None, head), i + 1
    path = parse_path(tokens[i])
    rest = [t.lower() for t in tokens[i + 1 : i + 4]]
    if rest[:3] == ["is", "not", "null"]:
        return Condition(path, "is not null"), i + 4
    if rest[:2] == ["is", "null"]:
        return Condition(path, "is null"), i + 3
    if rest[:1] in (["="], ["!="], ["<>"]):
        if i + 2 >= len(tokens):
            raise ValueError(f"rule is invalid: {rule!r}: {tokens[i + 1]} needs a value")
        op = "=" if rest[0] == "=" else "!="
        return Condition(path, op, (_literal(tokens[i + 2]),)), i + 3
    negate = rest[:2] == ["not", "in"]
    if rest[:1] == ["in"] or negate:
        j = i + (3 if negate else 2)
        values: list[str] = []
        parenthesised = j < len(tokens) and tokens[j] == "("
        if parenthesised:
            j += 1
        while j < len(tokens) and tokens[j].lower() not in ("and", "or", ")"):
            if tokens[j] != ",":
                values.append(_literal(tokens[j]))
            j += 1
        if parenthesised:
            if j >= len(tokens) or tokens[j] != ")":
                raise ValueError(f"rule is invalid: {rule!r}: unclosed (")
            j += 1
        if not values:
            raise ValueError(f"rule is invalid: {rule!r}: in needs values")
        return Condition(path, "not in" if negate else "in", tuple(values)), j
    raise ValueError(f"rule is invalid: {rule!r}: expected =, !=, in, not in, is null after {tokens[i]!r}")


# --- records -----------------------------------------------------------------------------------------------


class RowRecord:
    """A whole reply, or one row of it (a list item)."""

    def __init__(self, sets: Sequence[ResultSet], out: Mapping[str, str | None] | None = None) -> None:
        self.sets = list(sets)
        self.out = dict(out or {})

    def _set(self, path: ColumnPath) -> ResultSet | None:
        if path.set_index is not None:
            index = path.set_index - 1 if path.set_index > 0 else len(self.sets) + path.set_index
            if not 0 <= index < len(self.sets):
                return None
            return self.sets[index]
        for result in self.sets:
            if result.index(path.column or "") is not None:
                return result
        return None

    def value(self, path: ColumnPath) -> str | None:
        if path.out:
            text = self.out.get(path.column or "")
        else:
            result = self._set(path)
            column = result.index(path.column or "") if result is not None else None
            if result is None or column is None or not result.rows:
                return None
            if len(result.rows) > 1:
                raise MappingError(f"column {path.source!r} has {len(result.rows)} rows, expected one")
            text = result.rows[0][column]
        if text is None:
            return None
        return text.strip() or None

    def test(self, rule: Rule) -> bool:
        return rule.holds(self)

    def items(self, path: ColumnPath) -> list[RowRecord]:
        if path.out:
            raise MappingError(f"{path.source!r} is an OUT value, not a result set")
        result = self._set(path)
        if result is None:
            raise MappingError(f"the reply has no result set {path.source!r} ({len(self.sets)} result sets)")
        return [RowRecord([ResultSet(result.columns, [row])]) for row in result.rows]


class RowExtractor:
    """The ``rows`` reply format: see the module docstring for paths and rules."""

    def compile_path(self, path: str) -> ColumnPath:
        return parse_path(path)

    def compile_rule(self, rule: str) -> Rule:
        return parse_rule(rule)

    def parse(self, raw: RowsReply | str | bytes) -> RowRecord:
        """A :class:`RowsReply` from the adapter, or its JSON form (:meth:`RowsReply.text`)."""
        if isinstance(raw, RowsReply):
            return RowRecord(raw.sets, raw.out)
        try:
            data = json.loads(raw)
            sets = [
                ResultSet(
                    tuple(str(c).lower() for c in s["columns"]),
                    [tuple(cell_text(v) for v in row) for row in s["rows"]],
                )
                for s in data.get("sets", [])
            ]
            out = {str(k).lower(): cell_text(v) for k, v in data.get("out", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MappingError(f"the reply is not a set of rows: {exc}") from None
        return RowRecord(sets, out)
