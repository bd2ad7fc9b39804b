"""The UnionPay reconciliation file: fixed-width GBK ZM records cut by bytes, each checked against itself; a record
that does not add up, belongs to another merchant, or is cut short fails the file; the year of a record's
MMDDhhmmss comes from the file's day (1 January's file holds 31 December's late payments); the CLI prints rows."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pytest

from gateway.cli import main
from gateway.recon.normalize import SHANGHAI, StatementError
from gateway.recon.statements import parse
from gateway.recon.statements import unionpay as unionpay_file
from sandbox.channels.unionpay import ZM_FIELDS, _zm_entry, zm_record

MER = "777290058160001"


def record(**fields: str) -> dict[str, str]:
    amount = int(fields.pop("amount", "1000"))
    fee = int(fields.pop("fee", "3"))
    credit = fields.pop("credit", "yes") == "yes"
    at = dt.datetime.strptime(fields.pop("at", "2026-03-14 10:00:00"), "%Y-%m-%d %H:%M:%S")
    base = {"查询流水号": "1" * 21, "商户订单号": "P0001", "交易类型": "01" if credit else "04", "交易子类": "07"}
    return _zm_entry(MER, code="S22", at=at, amount=amount, fee=fee, credit=credit, **{**base, **fields})


def zip_of(records: list[dict[str, str]], day: str = "260314", *, merchant: str = MER) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"INN{day}88ZM_{merchant}", b"\r\n".join(zm_record(r) for r in records) + b"\r\n")
        archive.writestr(f"INN{day}88ZME_{merchant}", b"")
    return out.getvalue()


def test_the_record_layout_is_unionpays():
    assert len(ZM_FIELDS) == 42 and [w for _, w in unionpay_file.FIELDS] == [w for _, w in ZM_FIELDS]
    assert unionpay_file.RECORD_BYTES == sum(w for _, w in ZM_FIELDS) + 41 == len(zm_record(record()))


def test_payments_and_refunds():
    refund = record(
        credit="no", amount="400", fee="1", 商户订单号="R0001", 查询流水号="2" * 21, 原交易查询流水号="1" * 21,
        原始交易订单号="P0001", 交易子类="00", 商户自定义域="医保退费",
    )  # fmt: skip
    parsed = parse("unionpay", zip_of([record(), refund]))
    pay, back = parsed.rows
    assert (pay.type, pay.out_trade_no, pay.channel_trade_no, pay.amount_fen, pay.fee_fen) == (
        "pay",
        "P0001",
        "1" * 21,
        1000,
        3,
    )
    assert (back.type, back.out_trade_no, back.out_refund_no, back.channel_refund_no) == (
        "refund",
        "P0001",
        "R0001",
        "2" * 21,
    )
    assert (back.amount_fen, back.fee_fen, back.merchant) == (400, -1, MER)
    assert pay.time == dt.datetime(2026, 3, 14, 10, 0, tzinfo=SHANGHAI)
    assert (parsed.pay_fen, parsed.refund_fen, parsed.fee_fen) == (1000, 400, 2)


def test_a_chinese_custom_field_is_cut_by_bytes():
    parsed = parse("unionpay", zip_of([record(商户自定义域="门诊缴费挂号费")]))
    assert parsed.rows[0].amount_fen == 1000


@pytest.mark.parametrize(
    "change, why",
    [
        ({"清算净额": "C000000000998"}, "清算净额"),
        ({"结算金额": "C000000000999", "清算净额": "C000000000996"}, "结算金额"),
        ({"交易金额": "00000000x000"}, "交易金额"),
        ({"商户手续费": "X000000000003"}, "商户手续费"),
        (
            {"交易类型": "01", "结算金额": "D000000001000", "商户手续费": "C000000000003", "清算净额": "D000000000997"},
            "money from",
        ),
        ({"交易类型": "99"}, "neither consume nor refund"),
        ({"商户代码": "898000000000001"}, "merchant"),
    ],
)
def test_a_record_that_does_not_add_up_fails_the_file(change, why):
    with pytest.raises(StatementError, match=why):
        parse("unionpay", zip_of([record(), {**record(), **change}]))


def test_a_cut_record_and_a_bare_file_are_refused():
    data = zip_of([record()])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        zm = archive.read(f"INN26031488ZM_{MER}")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"INN26031488ZM_{MER}", zm[:300])
    with pytest.raises(StatementError, match="bytes, a record has"):
        parse("unionpay", out.getvalue())
    with pytest.raises(StatementError, match="zip as downloaded"):
        parse("unionpay", zm)
    with pytest.raises(StatementError, match="not a sound zip"):
        parse("unionpay", b"PK\x03\x04broken")


def test_the_first_of_january_holds_new_years_eve():
    late = record(at="2026-12-31 23:30:00")
    parsed = parse("unionpay", zip_of([late], day="270101"))
    assert parsed.rows[0].time == dt.datetime(2026, 12, 31, 23, 30, tzinfo=SHANGHAI)


def test_the_cli_prints_the_rows(tmp_path, capsys):
    path = tmp_path / "777290058160001_20260314.zip"
    path.write_bytes(zip_of([record()]))
    assert main(["statements", "parse", "--channel", "unionpay", str(path)]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["channel"] == "unionpay" and row["amount_fen"] == 1000 and row["time"].startswith("2026-03-14T10:00")
