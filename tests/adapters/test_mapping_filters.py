import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from adapters.mapping.errors import FilterError
from adapters.mapping.filters import (
    CodeTables,
    Filters,
    bool01,
    fen,
    format_date,
    format_datetime,
    parse_date,
    parse_datetime,
    to_bool,
    to_int,
    yuan,
)


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0, "0.00"), (1, "0.01"), (10, "0.10"), (1250, "12.50"), (100, "1.00"), (10_000_000_000, "100000000.00")],
)
def test_yuan_is_exact(amount: int, text: str) -> None:
    assert yuan(amount) == text
    assert fen(text) == amount


@pytest.mark.parametrize(
    ("text", "amount"),
    [("12.5", 1250), ("12.50", 1250), ("12", 1200), (" 0.07 ", 7), ("0012.30", 1230), ("-1.5", -150), ("0.29", 29)],
)
def test_fen_parses_yuan_text(text: str, amount: int) -> None:
    assert fen(text) == amount


def test_fen_never_goes_through_float() -> None:
    # 0.29 * 100 == 28.999999999999996 in binary floating point
    assert fen("0.29") == 29
    assert fen("1234567.89") == 123456789


@pytest.mark.parametrize("bad", ["12.505", "1e3", "abc", "", "12.", ".5", "1,000.00", "NaN", "Infinity", "12.5.0"])
def test_fen_refuses_what_is_not_an_exact_yuan_amount(bad: str) -> None:
    with pytest.raises(FilterError, match="fen"):
        fen(bad)


@pytest.mark.parametrize("bad", [12.5, True, None, "12.50"])
def test_yuan_refuses_non_integers(bad: object) -> None:
    with pytest.raises(FilterError, match="yuan"):
        yuan(bad)  # type: ignore[arg-type]


def test_datetime_converts_aware_times_to_shanghai() -> None:
    assert format_datetime("2024-05-01T02:00:00Z") == "2024-05-01 10:00:00"
    assert format_datetime("2024-05-01T23:30:00+08:00") == "2024-05-01 23:30:00"
    assert format_datetime("2024-04-30T18:30:00+00:00") == "2024-05-01 02:30:00"
    assert format_datetime("2024-05-01T10:00:00") == "2024-05-01 10:00:00"
    assert format_datetime("2024-05-01T02:00:00Z", "%Y%m%d%H%M%S") == "20240501100000"
    aware = dt.datetime(2024, 5, 1, 2, tzinfo=dt.UTC)
    assert format_datetime(aware) == "2024-05-01 10:00:00"


def test_date_formats_iso_dates_and_the_local_day_of_datetimes() -> None:
    assert format_date("2024-05-01") == "2024-05-01"
    assert format_date("2024-05-01", "%Y%m%d") == "20240501"
    assert format_date("2024-04-30T20:00:00Z") == "2024-05-01"


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", ""])
def test_datetime_refuses_non_iso_input(bad: str) -> None:
    with pytest.raises(FilterError):
        format_datetime(bad)


def test_his_times_are_read_as_shanghai_local() -> None:
    assert parse_datetime("2024-05-01 10:00:00") == "2024-05-01T10:00:00+08:00"
    assert parse_datetime("20240501100000") == "2024-05-01T10:00:00+08:00"
    assert parse_datetime("2024/05/01 10:00:00") == "2024-05-01T10:00:00+08:00"
    assert parse_datetime("01.05.2024 10:00", "%d.%m.%Y %H:%M") == "2024-05-01T10:00:00+08:00"
    assert parse_datetime("2024-05-01T02:00:00+00:00") == "2024-05-01T02:00:00+00:00"
    utc = ZoneInfo("UTC")
    assert parse_datetime("2024-05-01 10:00:00", tz=utc) == "2024-05-01T10:00:00+00:00"
    with pytest.raises(FilterError, match="datetime"):
        parse_datetime("10:00 May 1st")


def test_his_dates() -> None:
    assert parse_date("1985-03-12") == "1985-03-12"
    assert parse_date("19850312") == "1985-03-12"
    assert parse_date("1985-03-12 00:00:00") == "1985-03-12"
    with pytest.raises(FilterError, match="date"):
        parse_date("12/03/85")


def test_flags_and_integers() -> None:
    assert [to_bool(v) for v in ("1", "0", "true", "False", "Y", "n")] == [True, False, True, False, True, False]
    assert bool01(True) == "1" and bool01(False) == "0"
    with pytest.raises(FilterError, match="bool"):
        to_bool("maybe")
    assert to_int(" 42 ") == 42
    for bad in ("4.0", "1e3", ""):
        with pytest.raises(FilterError, match="int"):
            to_int(bad)


def test_code_tables_map_both_ways_and_name_the_table() -> None:
    codes = CodeTables({"pay_mode": {"wechat": "WX", "alipay": "ZFB"}})
    assert codes.encode("wechat", "pay_mode") == "WX"
    assert codes.decode("ZFB", "pay_mode") == "alipay"
    with pytest.raises(FilterError, match=r"pay_mode.*'unionpay'"):
        codes.encode("unionpay", "pay_mode")
    with pytest.raises(FilterError, match=r"pay_mode.*'XJ'"):
        codes.decode("XJ", "pay_mode")
    with pytest.raises(FilterError, match="no code table named 'gender'"):
        codes.encode("M", "gender")
    assert CodeTables({"t": {"a": "1", "b": "1", "c": "2"}}).ambiguous("t") == ["1"]


def test_convert_by_field_type() -> None:
    filters = Filters()
    assert filters.convert("12.50", "fen") == 1250
    assert filters.convert("1", "bool") is True
    assert filters.convert("7", "int") == 7
    assert filters.convert("2024-05-01 10:00:00", "datetime") == "2024-05-01T10:00:00+08:00"
    assert filters.convert("20240501", "date", "%Y%m%d") == "2024-05-01"
    assert filters.convert("x", "str") == "x"
