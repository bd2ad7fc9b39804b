"""Install the sandbox HIS's schema, seed and stored procedures into PostgreSQL or MariaDB over ODBC.

The SQL lives in ``sandbox/his/sql/<dialect>/*.sql``, run in file-name order, and is written so that the stock
clients run it too (``psql -f``, ``mariadb < file``, with ``DELIMITER`` lines). ODBC executes one statement at a
time, so the files are split here the way those clients split them: on ``;`` outside quotes, comments and
PostgreSQL dollar quotes, or on the current ``DELIMITER`` for MariaDB. Installing again starts over from the
seed, which is how tests reset the sandbox.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

DIALECTS = ("postgresql", "mariadb")
_DOLLAR_TAG = re.compile(r"\$[A-Za-z_0-9]*\$")
_DELIMITER = re.compile(r"^\s*DELIMITER\s+(\S+)\s*$", re.IGNORECASE)


def sql_files(dialect: str) -> list[tuple[str, str]]:
    """``(file name, text)`` of the dialect's scripts, in the order they run."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r} (expected one of {', '.join(DIALECTS)})")
    folder = resources.files("sandbox.his").joinpath("sql", dialect)
    files = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".sql")), key=lambda e: e.name)
    return [(entry.name, entry.read_text(encoding="utf-8")) for entry in files]


def split_statements(script: str, dialect: str) -> Iterator[str]:
    """The statements of one script, without their terminator."""
    delimiter = ";"
    buffer: list[str] = []
    i, n = 0, len(script)
    at_line_start = True
    while i < n:
        if at_line_start and dialect == "mariadb":
            end = script.find("\n", i)
            line = script[i : n if end < 0 else end]
            match = _DELIMITER.match(line)
            if match:
                delimiter = match.group(1)
                i = n if end < 0 else end + 1
                continue
        ch = script[i]
        at_line_start = ch == "\n"
        if script.startswith(delimiter, i):
            statement = "".join(buffer).strip()
            if statement:
                yield statement
            buffer = []
            i += len(delimiter)
            continue
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == "/" and script.startswith("/*", i):
            end = script.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch in "'\"`":
            end = i + 1
            while end < n:
                if script[end] == "\\" and dialect == "mariadb":
                    end += 2
                    continue
                if script[end] == ch:
                    if end + 1 < n and script[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            buffer.append(script[i : end + 1])
            i = end + 1
            continue
        if ch == "$" and dialect == "postgresql":
            match = _DOLLAR_TAG.match(script, i)
            if match:
                tag = match.group(0)
                end = script.find(tag, match.end())
                end = n if end < 0 else end + len(tag)
                buffer.append(script[i:end])
                i = end
                continue
        buffer.append(ch)
        i += 1
    statement = "".join(buffer).strip()
    if statement:
        yield statement


def install(connection: Any, dialect: str) -> int:
    """Run every script on an open DB-API connection (autocommit); returns how many statements ran."""
    count = 0
    cursor = connection.cursor()
    try:
        for name, text in sql_files(dialect):
            for statement in split_statements(text, dialect):
                try:
                    cursor.execute(statement)
                    while cursor.nextset():
                        pass
                except Exception as exc:
                    first_line = statement.splitlines()[0][:120]
                    raise RuntimeError(f"{dialect}/{name}: {first_line}: {exc}") from exc
                count += 1
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
    return count


def install_odbc(connection_string: str, dialect: str, *, timeout_s: int = 10) -> int:
    """Connect with pyodbc and :func:`install`. MariaDB's driver mangles UTF-16 text, so it gets UTF-8."""
    import pyodbc

    with contextlib.closing(pyodbc.connect(connection_string, autocommit=True, timeout=timeout_s)) as connection:
        if dialect == "mariadb":
            connection.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
            connection.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
            connection.setencoding(encoding="utf-8")
        return install(connection, dialect)
