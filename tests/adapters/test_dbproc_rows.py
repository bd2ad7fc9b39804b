"""Result-set mapping, call syntax, SQLSTATE classification and profile rules of the stored-procedure adapter,
without a database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.base import ErrorKind
from adapters.dbproc import _Failure, bind_value, build_statement, classify, odbc_endpoint, redact
from adapters.mapping.errors import MappingError
from adapters.mapping.rows import ResultSet, RowExtractor, RowsReply, cell_text
from adapters.profile import CallOptions, ProfileError, load_profile
from bridge import catalog

ROOT = Path(__file__).resolve().parents[2]
PG_PROFILE = ROOT / "config" / "profiles" / "dbproc-postgresql.toml"

REPLY = RowsReply(
    [
        ResultSet(("line_no", "bill_no"), [("1", "B0001"), ("2", "B0002")]),
        ResultSet(("status", "code", "receipt_no"), [("T", "0", "SF1")]),
    ],
    {"out_xml": "<Response/>"},
)


def test_paths_address_columns_sets_and_out_values() -> None:
    x = RowExtractor()
    record = x.parse(REPLY)
    assert record.value(x.compile_path("STATUS")) == "T"
    assert record.value(x.compile_path("set[-1].receipt_no")) == "SF1"
    assert record.value(x.compile_path("set[2].code")) == "0"
    assert record.value(x.compile_path("set[1].status")) is None
    assert record.value(x.compile_path("out.OUT_XML")) == "<Response/>"
    assert [item.value(x.compile_path("bill_no")) for item in record.items(x.compile_path("set[1]"))] == [
        "B0001",
        "B0002",
    ]
    with pytest.raises(MappingError, match="2 rows"):
        record.value(x.compile_path("bill_no"))
    with pytest.raises(MappingError):
        record.items(x.compile_path("set[3]"))
    with pytest.raises(ValueError):
        x.compile_path("set[0].status")
    assert x.parse(REPLY.text()).value(x.compile_path("receipt_no")) == "SF1"


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        ("status = 'T'", True),
        ("status = T and code in 0,00", True),
        ("status != 'T' or receipt_no is null", False),
        ("status in ('F', 'T')", True),
        ("status not in F, N", True),
        ("missing is null", True),
        ("missing = 'x' or true", True),
        ("code <> '0'", False),
    ],
)
def test_rules(rule: str, holds: bool) -> None:
    x = RowExtractor()
    assert x.parse(REPLY).test(x.compile_rule(rule)) is holds


@pytest.mark.parametrize("rule", ["status =", "status in", "status ~ 'T'", "status = 'T' and", "(status = 'T'"])
def test_bad_rules_are_refused(rule: str) -> None:
    with pytest.raises(ValueError):
        RowExtractor().compile_rule(rule)


def test_cells_are_exact_text() -> None:
    assert cell_text(Decimal("12.50")) == "12.50"
    assert cell_text(Decimal("1E+2")) == "100"
    assert cell_text(dt.datetime(2026, 1, 2, 3, 4, 5, 678)) == "2026-01-02 03:04:05"
    assert cell_text(dt.date(2026, 1, 2)) == "2026-01-02"
    assert cell_text(True) == "1" and cell_text(None) is None


def test_call_syntax_by_dialect() -> None:
    plain = CallOptions()
    out = CallOptions(out=["out_xml"])
    assert build_statement("postgresql", "his_x", 2, plain).sql == "SELECT * FROM his_x(?, ?)"
    assert build_statement("postgresql", "his_x", 2, CallOptions(routine="procedure", out=["o"])).sql == (
        "CALL his_x(?, ?, NULL)"
    )
    mariadb = build_statement("mariadb", "his_dispatch", 2, out)
    assert (mariadb.sql, mariadb.out_sql) == ("CALL his_dispatch(?, ?, @out_xml)", "SELECT @out_xml AS out_xml")
    assert build_statement("mssql", "dbo.p", 2, plain).sql == "{CALL dbo.p(?, ?)}"
    assert "EXEC dbo.p ?, @out_xml OUTPUT" in build_statement("mssql", "dbo.p", 1, out).sql


def test_parameters_bind_typed_and_exact() -> None:
    tz = dt.timezone(dt.timedelta(hours=8))
    assert bind_value("12.50", "decimal", tz) == Decimal("12.50")
    assert bind_value("", "str", tz) is None
    assert bind_value("7", "int", tz) == 7
    assert bind_value("2026-01-01T02:00:00+00:00", "datetime", tz) == dt.datetime(2026, 1, 1, 10, 0)
    with pytest.raises(MappingError):
        bind_value("12.5.0", "decimal", tz)


def test_endpoint_and_previews_never_show_the_password() -> None:
    connection = "Driver={PostgreSQL Unicode};Server=10.1.2.3;Port=5433;Database=his;Uid=u;Pwd={p;w}"
    assert odbc_endpoint(connection, "postgresql") == "odbc://10.1.2.3:5433/his"
    assert "p;w" not in redact(connection) and "pwd=***" in redact(connection)
    assert odbc_endpoint("Driver=x;Server=tcp:db1,1433;Database=HIS", "mssql") == "odbc://db1:1433/HIS"
    assert odbc_endpoint("DSN=hisdb;Uid=u", "mariadb") == "odbc://dsn/hisdb"


class _DriverError(Exception):
    def __init__(self, state: str, message: str) -> None:
        super().__init__(state, message)


@pytest.mark.parametrize(
    ("phase", "state", "message", "kind"),
    [
        ("connect", "08001", "could not connect", ErrorKind.retryable),
        ("connect", "HYT00", "login timeout", ErrorKind.retryable),
        ("execute", "40001", "deadlock", ErrorKind.retryable),
        ("execute", "40P01", "deadlock detected", ErrorKind.retryable),
        ("execute", "HY000", "Lock wait timeout exceeded (1205)", ErrorKind.retryable),
        ("execute", "08S01", "communication link failure", ErrorKind.in_doubt),
        ("execute", "57P01", "terminating connection", ErrorKind.in_doubt),
        ("execute", "HYT00", "query timeout", ErrorKind.in_doubt),
        ("execute", "HY000", "Lost connection to server during query (2013)", ErrorKind.in_doubt),
        ("execute", "23505", "duplicate key", ErrorKind.permanent),
        ("execute", "22003", "numeric out of range", ErrorKind.permanent),
        ("execute", "42883", "function does not exist", ErrorKind.permanent),
        ("execute", "45000", "signalled", ErrorKind.permanent),
        ("execute", "HY000", "general error", ErrorKind.in_doubt),
        ("commit", "40001", "serialization failure", ErrorKind.retryable),
        ("commit", "08S01", "link failure", ErrorKind.in_doubt),
    ],
)
def test_sqlstates_are_classified(phase: str, state: str, message: str, kind: ErrorKind) -> None:
    assert classify(_Failure(phase, _DriverError(state, message)), "op").kind is kind


def test_profile_rules_for_stored_procedures() -> None:
    with pytest.raises(ProfileError, match="not a procedure name"):
        load_profile(
            PG_PROFILE,
            catalog.OPERATIONS,
            overrides={'operations."trade.check".call': "his_trade_check; DROP TABLE bills"},
            environ={},
        )
    with pytest.raises(ProfileError, match="exactly one of call"):
        load_profile(PG_PROFILE, catalog.OPERATIONS, overrides={'operations."charge.commit".call': "x"}, environ={})


def test_steps_are_refused_outside_dbproc() -> None:
    with pytest.raises(ProfileError, match="apply to protocol 'dbproc' only"):
        load_profile(
            ROOT / "config" / "profiles" / "sandbox-soap.toml",
            catalog.OPERATIONS,
            overrides={'operations."trade.check".refcursors': True},
            environ={},
        )
