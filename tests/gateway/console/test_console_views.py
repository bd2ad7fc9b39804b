"""What the console shows: the day's totals and counts per class, the 30-day chart, the filtered exception
list, an exception's three records side by side (escaped), and exports of the same filtered list as CSV that
Excel opens as UTF-8 and as XLSX with exact amounts. Every string a page uses is in both languages."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal
from pathlib import Path

from openpyxl import load_workbook

from gateway.console import i18n
from gateway.console.auth import Role
from gateway.console.chart import DayPoint, daily_chart
from gateway.console.formatting import parse_yuan, yuan
from gateway.store.console_tables import PROPOSAL_STATES
from gateway.store.recon_tables import EXCEPTION_CLASSES, EXCEPTION_STATUSES
from tests.support.console_rig import seed_over_collection, seed_run, seed_under_collection

DAY = dt.date(2026, 11, 24)
TEMPLATES = Path(__file__).resolve().parents[3] / "gateway" / "console" / "templates"
CODE = Path(__file__).resolve().parents[3] / "gateway" / "console"


def test_money_is_yuan_from_integer_fen_never_float():
    assert yuan(123456) == "1,234.56" and yuan(-5) == "-0.05" and yuan(None) == ""
    assert yuan(10**15 + 1, grouped=False) == "10000000000000.01"
    assert parse_yuan("1,200.50") == 120050 and parse_yuan("¥0.10") == 10
    for bad in ("1.005", "abc", "NaN"):
        try:
            parse_yuan(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_every_message_key_in_use_exists_in_both_languages():
    used: set[str] = set()
    for path in [*TEMPLATES.glob("*.html"), *CODE.rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"""_\(\s*['"]([a-z_]+\.[a-z_.]+[a-z])['"]""", text))
        used |= set(re.findall(r"""["']((?:error|flash|login)\.[a-z_]+)["']""", text)) - {"error.html", "login.html"}
    dynamic = {
        *(f"class.{c}" for c in EXCEPTION_CLASSES),
        *(f"status.{s}" for s in EXCEPTION_STATUSES),
        *(f"proposal.state.{s}" for s in PROPOSAL_STATES),
        *(f"role.{r.name}" for r in Role),
        *(f"channel.{c}" for c in ("wechat", "alipay", "unionpay")),
    }
    assert (used | dynamic) - set(i18n.MESSAGES) == set()
    for key, (zh, en) in i18n.MESSAGES.items():
        assert zh and en, key
        assert sorted(re.findall(r"{(\w+)}", zh)) == sorted(re.findall(r"{(\w+)}", en)), key


def test_the_chart_is_inline_svg_scaled_from_fen():
    points = [DayPoint(DAY - dt.timedelta(days=29 - i), i * 10_000, i % 7 == 0) for i in range(30)]
    svg = str(daily_chart(points, title="<t>", amount_label="a", exceptions_label="e"))
    assert svg.startswith("<svg") and "&lt;t&gt;" in svg and "<script" not in svg
    assert svg.count('class="bar"') == 30 and svg.count('class="exc"') == 5
    heights = [int(h) for h in re.findall(r'class="bar" x="\d+" y="\d+" width="\d+" height="(\d+)"', svg)]
    assert heights == sorted(heights) and heights[0] == 0 and max(heights) > 0


async def test_the_day_at_a_glance(console, client_factory):
    await seed_run(console.db, DAY)
    await seed_run(console.db, DAY - dt.timedelta(days=3), over_collection=0, under_collection=2)
    await seed_over_collection(console.db, console.channel, DAY)
    await seed_under_collection(console.db, DAY)
    client = await client_factory("viewer1")
    status, text = await client.get("/", day=DAY.isoformat())
    assert status == 200
    assert "12,345.00" in text and "12,357.00" in text and "74.10" in text
    assert re.search(r'data-class="over_collection">1<', text) and re.search(r'data-class="under_collection">1<', text)
    assert text.count('<rect class="bar"') == 30 and text.count('<circle class="exc"') == 2
    assert 'data-channel="wechat"' in text and "<svg" in text
    # Per channel, the figures the run read from the day's statement: 38 payments and 3 refunds of its 41 rows.
    row = text[text.index('<tr data-channel="wechat">') :]
    row = row[: row.index("</tr>")]
    cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
    assert cells == ["38", "13,000.00", "3", "643.00", "74.10"], cells
    status, text = await client.get("/", day=(DAY + dt.timedelta(days=1)).isoformat())
    assert "该日尚未对账" in text


async def test_filters_narrow_the_list(console, client_factory):
    over, _ = await seed_over_collection(console.db, console.channel, DAY)
    under = await seed_under_collection(console.db, DAY - dt.timedelta(days=1))
    client = await client_factory("viewer1")

    async def ids(**query) -> set[int]:
        status, text = await client.get("/exceptions", **query)
        assert status == 200
        return {int(i) for i in re.findall(r'<tr data-id="(\d+)"', text)}

    assert await ids() == {over, under}
    assert await ids(**{"class": "over_collection"}) == {over}
    assert await ids(**{"from": DAY.isoformat(), "to": DAY.isoformat()}) == {over}
    assert await ids(status="handled") == set()
    exc = await client.get(f"/exceptions/{over}")
    trade_no = re.search(r'class="mono">(T\w+)</dd>', exc[1]).group(1)
    assert await ids(q=trade_no[-10:]) == {over}
    assert await ids(channel="wechat", **{"class": "under_collection"}) == {under}


async def test_an_exception_shows_its_three_records_side_by_side_escaped(console, client_factory):
    exception_id = await seed_under_collection(console.db, DAY)
    from gateway.recon import exceptions as recon

    await recon.update_exception(console.db, exception_id, "t", note="<script>alert(1)</script>")
    client = await client_factory("viewer1")
    status, text = await client.get(f"/exceptions/{exception_id}")
    assert status == 200
    for side in ("his", "platform", "channel"):
        assert f'data-side="{side}"' in text
    assert "¥35.00" in text and text.count("无记录") == 2 and "张*" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    status, text = await client.get("/exceptions/999999")
    assert status == 404


async def test_exports_of_the_filtered_list(console, client_factory):
    over, _ = await seed_over_collection(console.db, console.channel, DAY, amount_fen=1_234_56)
    await seed_under_collection(console.db, DAY - dt.timedelta(days=1))
    client = await client_factory("viewer1")
    status, headers, body = await client.get_bytes("/exceptions.csv", **{"class": "over_collection"})
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.startswith(b"\xef\xbb\xbf") and "attachment" in headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0][:5] == ["编号", "对账日", "医院", "渠道", "类别"]
    assert len(rows) == 2 and rows[1][0] == str(over) and rows[1][4] == "长款"
    assert (rows[0][-1], rows[1][-1]) == ("类别代码", "over_collection")  # the code, in every language
    assert "1234.56" in rows[1] and "" in rows[1]

    status, headers, body = await client.get_bytes("/exceptions.xlsx", status="all", lang="en")
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(body)).active
    values = list(sheet.values)
    assert values[0][:5] == ("No.", "Day", "Hospital", "Channel", "Class") and len(values) == 3
    assert values[0][-1] == "Class code" and {v[-1] for v in values[1:]} == {"over_collection", "under_collection"}
    over_row = next(v for v in values[1:] if v[0] == over)
    assert Decimal(str(over_row[13])) == Decimal("1234.56") and over_row[4] == "Over-collection"
