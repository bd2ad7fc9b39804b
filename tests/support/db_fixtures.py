"""Pytest fixtures for the stored-procedure tests: one PostgreSQL and one MariaDB server per session, and the
sandbox HIS installed afresh (schema, seed, procedures) into them for each test that asks for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox.his.sql_install import install_odbc
from tests.support.databases import DB_USER, DatabaseUnavailable, MariadbServer, PostgresServer, TestDatabase


@dataclass
class SandboxDb:
    """A database holding a freshly installed sandbox HIS, with helpers to look into it from outside."""

    db: TestDatabase

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def connection(self) -> str:
        return self.db.connection

    def admin(self) -> Any:
        import pyodbc

        connection = pyodbc.connect(self.db.admin_connection, autocommit=True)
        if self.dialect == "mariadb":
            connection.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
            connection.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
            connection.setencoding(encoding="utf-8")
        return connection

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.admin()) as connection:
            return [tuple(row) for row in connection.execute(sql, *params).fetchall()]

    def execute(self, sql: str, *params: Any) -> None:
        with contextlib.closing(self.admin()) as connection:
            connection.execute(sql, *params)

    def add_fault(self, operation: str, mode: str, *, sleep_ms: int = 0, error_code: str = "9999") -> None:
        self.execute(
            "INSERT INTO his_faults (operation, mode, sleep_ms, error_code) VALUES (?, ?, ?, ?)",
            operation,
            mode,
            sleep_ms,
            error_code,
        )

    def kill_sessions_running(self, marker: str) -> int:
        """Kill the bridge's sessions busy with ``marker`` (the connection dies mid-call). Inside a MariaDB
        procedure the process list shows the statement running in it, so a sleeping fault matches too."""
        if self.dialect == "postgresql":
            rows = self.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE ? AND pid <> pg_backend_pid()",
                f"%{marker}%",
            )
            return len(rows)
        rows = self.query(
            "SELECT id FROM information_schema.processlist"
            " WHERE user = ? AND command IN ('Query', 'Execute') AND (info LIKE ? OR state = 'User sleep')"
            " AND id <> CONNECTION_ID()",
            DB_USER,
            f"%{marker}%",
        )
        for (session,) in rows:
            self.execute(f"KILL CONNECTION {int(session)}")
        return len(rows)


def _start(server_class: type) -> Iterator[TestDatabase]:
    try:
        server = server_class()
        db = server.start()
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield db
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TestDatabase]:
    yield from _start(PostgresServer)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[TestDatabase]:
    yield from _start(MariadbServer)


@pytest.fixture
def sandbox_pg(postgres_server: TestDatabase) -> SandboxDb:
    install_odbc(postgres_server.connection, "postgresql")
    return SandboxDb(postgres_server)


@pytest.fixture
def sandbox_mariadb(mariadb_server: TestDatabase) -> SandboxDb:
    install_odbc(mariadb_server.connection, "mariadb")
    return SandboxDb(mariadb_server)


@pytest.fixture(params=["postgresql", "mariadb"])
def sandbox_db(request: pytest.FixtureRequest) -> SandboxDb:
    """Each test using it runs once per database."""
    return request.getfixturevalue("sandbox_pg" if request.param == "postgresql" else "sandbox_mariadb")
