"""Statements stream (gzip / zip member → incremental decode → lines → rows) and give exactly what parsing the
whole decoded text gives, wherever the chunks happen to cut (inside a character, between \\r and \\n); damage
found late in a stream still fails the batch; a stored statement is checked once and its rows streamed again
from the same bytes. Memory is measured by scripts/bench_recon.py (``parse_peak_rss_mb``), not asserted here."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import io
import itertools
import zipfile
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channels.base import ChannelError
from gateway.recon import statements
from gateway.recon.normalize import (
    ParsedStatement,
    StatementError,
    StatementRow,
    StatementTally,
    StatementTotals,
    check_totals,
)
from gateway.recon.statements import alipay as alipay_bill
from gateway.recon.statements import source
from gateway.recon.statements import wechat as wechat_bill
from gateway.recon.statements.store import fetch
from gateway.store import registry
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.recon_tables import statements as statements_table
from sandbox.channels import bills
from tests.support.gateway_rig import HOSPITAL, MERCHANT, gateway_config
from tests.support.rig import REPO

FIXTURES = REPO / "tests" / "fixtures" / "statements"
WECHAT_SAMPLES = sorted((FIXTURES / "wechatpay").glob("tradebill_*_sample.csv"))
BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]


def pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.text(alphabet="ab中文`,\t ", max_size=6), st.sampled_from(BREAKS)), max_size=40),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_lines_across_any_cut_equal_splitlines_of_the_whole(parts, cuts):
    text = "".join(parts)
    assert list(source.lines(pieces(text, cuts), "test")) == text.splitlines()


@contextlib.contextmanager
def sniff_window(size: int) -> Iterator[None]:
    saved = source.SNIFF
    source.SNIFF = size
    try:
        yield
    finally:
        source.SNIFF = saved


def whole_file_decode(data: bytes) -> str:
    """How the parsers decoded before they streamed: UTF-8 (BOM dropped) if it is valid, else GB18030."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="abc,`\n\r中国医院挂号费押金退款€é", max_size=200),
    st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]),
    st.integers(min_value=1, max_value=9),
    st.sampled_from([4, source.SNIFF]),
)
def test_decoding_across_any_chunk_size_equals_decoding_the_whole(text, encoding, size, sniff):
    data = text.encode(encoding)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    with sniff_window(sniff):
        try:
            streamed = "".join(source.decoded(chunks, "test"))
        except StatementError:
            # Only when the deciding bytes were valid UTF-8 and later ones are not (a tiny window makes that
            # possible here; real windows are 64 KiB of Chinese text).
            assert sniff < len(data) and encoding == "gb18030"
            return
    assert streamed == whole_file_decode(data)
    if encoding != "gb18030":
        assert streamed == data.decode(encoding)


def _wechat_variants() -> Iterator[tuple[str, bytes]]:
    for path in WECHAT_SAMPLES:
        raw = path.read_bytes()
        text = raw.decode()
        yield path.name, raw
        yield f"{path.name}.gz", gzip.compress(raw)
        crlf = "\ufeff" + "\r\n".join(line + "\t" for line in text.splitlines()) + "\r\n"
        yield f"{path.name} bom crlf tabs gz", gzip.compress(crlf.encode())
        yield f"{path.name} gb18030", text.encode("gb18030")
    pays, refunds = _ledger()
    bill = bills.wechat_tradebill("1230000109", pays, refunds)
    yield "sandbox ALL", bill
    yield "sandbox ALL, two gzip members", gzip.compress(bill[:700]) + gzip.compress(bill[700:])


def _alipay_variants() -> Iterator[tuple[str, bytes]]:
    detail = (FIXTURES / "alipay" / "trade_detail.csv").read_bytes()
    summary = (FIXTURES / "alipay" / "trade_summary.csv").read_bytes()
    yield "fixture detail", detail
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("20881021462251350156_20250314_业务明细.csv", detail)
        archive.writestr("20881021462251350156_20250314_业务明细(汇总).csv", summary)
    yield "fixture zip", out.getvalue()
    pays, refunds = _ledger()
    yield (
        "sandbox zip",
        bills.alipay_tradebill("2088", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15)),
    )


def _ledger() -> tuple[list[dict], list[dict]]:
    base = {"appid": "wx1", "payer_id": "o1", "scene": "native", "description": "门诊缴费", "attach": None}
    pays = [
        {**base, "trade_no": f"42{i:04d}", "out_trade_no": f"P-{i}", "amount_fen": 1000 + 37 * i,
         "created_at": f"2025-03-14T{i % 24:02d}:00:00+08:00", "paid_at": f"2025-03-14T{i % 24:02d}:00:09+08:00"}
        for i in range(60)
    ]  # fmt: skip
    refunds = [
        {**base, "trade_no": f"42{i:04d}", "out_trade_no": f"P-{i}", "refund_no": f"503{i}", "out_refund_no": f"R-{i}",
         "amount_fen": 500, "total_fen": 1000 + 37 * i, "created_at": "2025-03-14T23:10:00+08:00",
         "succeeded_at": "2025-03-14T23:10:04+08:00", "paid_at": f"2025-03-14T{i % 24:02d}:00:09+08:00"}
        for i in range(0, 60, 7)
    ]  # fmt: skip
    return pays, refunds


def _whole_text_rows(channel: str, data: bytes) -> list[StatementRow]:
    """The rows the way the parsers read before they streamed: the whole file decoded, then split."""
    if channel == "alipay" and data.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            [detail] = [i for i in archive.infolist() if source.zip_name(i).endswith("业务明细.csv")]
            data = archive.read(detail)
    if data.startswith(b"\x1f\x8b"):
        data = gzip.decompress(data)
    return statements.parse(channel, whole_file_decode(data)).rows


CASES = [("wechat", name, data) for name, data in _wechat_variants()] + [
    ("alipay", name, data) for name, data in _alipay_variants()
]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, source.CHUNK])
@pytest.mark.parametrize(("channel", "name", "data"), CASES, ids=[f"{c}: {n}" for c, n, _ in CASES])
def test_streamed_rows_equal_whole_text_rows_for_every_fixture(monkeypatch, chunk, channel, name, data):
    expected = _whole_text_rows(channel, data)
    assert expected
    monkeypatch.setattr(source, "CHUNK", chunk)
    tally = StatementTally()
    streamed = list(statements.rows(channel, data, tally=tally))
    assert streamed == expected
    assert tally == StatementTally.of(expected)


def test_damage_late_in_a_stream_fails_the_batch(monkeypatch):
    monkeypatch.setattr(source, "CHUNK", 256)
    pays, refunds = _ledger()
    bill = bills.wechat_tradebill("1230000109", pays, refunds)
    with pytest.raises(StatementError, match="damaged or cut short"):
        statements.check("wechat", gzip.compress(bill)[:-40])
    with sniff_window(1024), pytest.raises(StatementError, match="not valid utf-8 text"):
        statements.check("wechat", bill[:-200] + "门诊".encode("gbk") + bill[-200:])  # GBK after 1 KiB of UTF-8

    packed = bytearray(
        bills.alipay_tradebill("2088", dt.date(2025, 3, 14), pays, refunds, generated=dt.datetime(2025, 3, 15))
    )
    with zipfile.ZipFile(io.BytesIO(bytes(packed))) as archive:
        info = next(i for i in archive.infolist() if source.zip_name(i).endswith("业务明细.csv"))
    body = info.header_offset + 30 + len(info.orig_filename.encode()) + len(info.extra) + info.compress_size // 2
    packed[body] ^= 0xFF
    with pytest.raises(StatementError, match="alipay statement: the compressed file is damaged"):
        statements.check("alipay", bytes(packed))  # found by the member's CRC (or inflate) as it streams


def test_a_file_without_line_ends_is_refused_without_being_held():
    endless = gzip.compress(b"`" + b"9" * (source.MAX_LINE * 4))
    with pytest.raises(StatementError, match="a line longer than 65536 characters"):
        statements.check("wechat", endless)


def test_a_parser_not_yet_streaming_registers_as_it_is():
    def whole_parse(data: bytes | str, *, merchant: str | None = None) -> ParsedStatement:
        """Written against the older interface: all rows in a list, then check_totals on the whole."""
        row = StatementRow(
            channel="unionpay",
            merchant=merchant or "898",
            channel_trade_no="U1",
            out_trade_no="P-1",
            out_refund_no=None,
            channel_refund_no=None,
            type="pay",
            amount_fen=1250,
            fee_fen=3,
            time=dt.datetime(2025, 3, 14, 9, tzinfo=dt.UTC),
            status="success",
        )
        parsed = ParsedStatement([row], StatementTotals(count=1, pay_fen=1250 if data == b"ok" else 1300))
        check_totals(parsed, "unionpay statement")
        return parsed

    statements.register("unionpay-test", parse=whole_parse)
    try:
        assert statements.check("unionpay-test", b"ok").pay_fen == 1250
        assert [r.amount_fen for r in statements.rows("unionpay-test", b"ok")] == [1250]
        assert statements.parse("unionpay-test", b"ok").totals.count == 1
        with pytest.raises(StatementError, match="payments total 1300 fen announced, rows sum to 1250"):
            statements.check("unionpay-test", b"bad")
    finally:
        del statements.PARSERS["unionpay-test"]
    with pytest.raises(TypeError):
        statements.register("x", rows=wechat_bill.rows, parse=whole_parse)
    with pytest.raises(ValueError, match="no statement parser"):
        statements.check("unknown", b"")


class StatementChannel:
    def __init__(self, data: bytes | None) -> None:
        self.data = data

    async def download_bill(self, day: dt.date) -> bytes:
        if self.data is None:
            raise ChannelError("NO_STATEMENT_EXIST", "no bill")
        return self.data


@pytest.fixture
async def db(tmp_path, keys, db_url):
    cfg = gateway_config(tmp_path, keys, db_url)
    database = Database(cfg.database.url)
    await upgrade(database)
    await registry.sync_from_config(database, cfg)
    yield database
    await database.close()


async def test_fetch_checks_once_stores_the_tally_and_streams_rows_again(db):
    day = dt.date(2025, 3, 14)
    data = dict(_alipay_variants())["fixture zip"]
    got = await fetch(db, HOSPITAL, MERCHANT, "alipay", StatementChannel(data), day)
    assert len(got.parsed.rows) == 12 and got.parsed.pay_fen == 454890 and got.parsed.refund_fen == 58600
    first, again = list(got.parsed.rows), list(got.parsed.rows)
    assert first == again == alipay_bill.parse(data).rows
    t = statements_table.c
    async with db.read() as conn:
        stored = (await conn.execute(sa.select(statements_table).where(t.id == got.statement_id))).one()
    assert (stored.status, stored.row_count, stored.pay_count, stored.refund_count) == ("parsed", 12, 8, 4)
    assert (stored.pay_fen, stored.refund_fen, stored.fee_fen, stored.raw) == (454890, 58600, 2379, data)

    bad = data[:-60]  # the zip's central directory cut off
    with pytest.raises(StatementError, match=f"merchant {MERCHANT} statement of {day}"):
        await fetch(db, HOSPITAL, MERCHANT, "alipay", StatementChannel(bad), day)
    async with db.read() as conn:
        failed = (await conn.execute(sa.select(statements_table).where(t.status == "failed"))).one()
    assert failed.raw == bad and failed.row_count is None and "zip" in failed.error

    empty = await fetch(db, HOSPITAL, MERCHANT, "alipay", StatementChannel(None), day)
    assert empty.statement_id is None and len(empty.parsed.rows) == 0 and list(empty.parsed.rows) == []


def test_row_json_carries_every_field_in_order():
    row = alipay_bill.parse(dict(_alipay_variants())["fixture zip"]).rows[9]
    expected = dataclasses.asdict(row) | {"time": "2025-03-14T15:10:02+08:00"}
    assert list(row.as_json().items()) == list(expected.items())
