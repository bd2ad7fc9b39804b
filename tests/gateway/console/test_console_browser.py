"""The console in a real browser (Debian's headless Chromium through Playwright), as finance staff use it:
sign in, read the day's summary, switch the language, filter the exceptions, propose a refund as a clerk (who
can neither see nor forge an approval), approve it as an approver, mark an under-collection handled, export
CSV and XLSX. Screenshots of each step (laptop and tablet widths) are saved under var/test-artifacts/."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from openpyxl import load_workbook
from playwright.async_api import Page, expect

from gateway.console.formatting import today
from gateway.recon import exceptions as recon
from tests.support.browser import TABLET, artifacts_for, chromium
from tests.support.console_rig import PASSWORD, seed_over_collection, seed_run, seed_under_collection

pytestmark = pytest.mark.system


async def sign_in(page: Page, base: str, username: str) -> None:
    await page.goto(base + "/console/")
    await expect(page).to_have_url(f"{base}/console/login?next=%2Fconsole%2F")
    await page.get_by_label("用户名").fill(username)
    await page.get_by_label("密码").fill(PASSWORD)
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("heading", name="当日概览")).to_be_visible()


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="退出").click()
    await expect(page.get_by_role("heading", name="登录")).to_be_visible()


async def test_finance_staff_work_the_day_in_a_browser(console):
    shots = artifacts_for("test_finance_staff_work_the_day_in_a_browser")
    day = today() - dt.timedelta(days=1)
    for back in range(0, 30, 3):
        await seed_run(console.db, day - dt.timedelta(days=back), channel_fen=1_000_000 + back * 37_519)
    over, order = await seed_over_collection(console.db, console.channel, day, amount_fen=128_50)
    under = await seed_under_collection(console.db, day, amount_fen=35_00)
    base = console.running.url

    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, base, "clerk1")
        card = page.locator("section.hospital")
        await expect(card.locator('[data-class="over_collection"]')).to_have_text("1")
        await expect(card.locator('[data-class="under_collection"]')).to_have_text("1")
        await expect(card.locator("svg.chart rect.bar")).to_have_count(30)
        await expect(card.locator("table.totals")).to_contain_text("12,345.00")
        await page.screenshot(path=shots / "01-summary-zh.png", full_page=True)

        await page.get_by_role("link", name="English").click()
        await expect(page.get_by_role("heading", name="The day at a glance")).to_be_visible()
        await page.screenshot(path=shots / "02-summary-en.png", full_page=True)
        await page.get_by_role("link", name="中文").click()
        await expect(page.get_by_role("heading", name="当日概览")).to_be_visible()

        await page.get_by_role("navigation").get_by_role("link", name="异常账").click()
        rows = page.locator("#exceptions tbody tr")
        await expect(rows).to_have_count(2)
        await page.locator("#filters").get_by_label("类别").select_option("over_collection")
        await page.get_by_role("button", name="筛选").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-class", "over_collection")
        await page.screenshot(path=shots / "03-exceptions-filtered.png", full_page=True)

        async with page.expect_download() as csv_download:
            await page.get_by_role("link", name="导出 CSV").click()
        csv_path = shots / "exceptions.csv"
        await (await csv_download.value).save_as(csv_path)
        csv_bytes = csv_path.read_bytes()
        assert csv_bytes.startswith(b"\xef\xbb\xbf") and "长款" in csv_bytes.decode("utf-8-sig")
        assert "128.50" in csv_bytes.decode("utf-8-sig") and "短款" not in csv_bytes.decode("utf-8-sig")
        async with page.expect_download() as xlsx_download:
            await page.get_by_role("link", name="导出 Excel").click()
        xlsx_path = shots / "exceptions.xlsx"
        await (await xlsx_download.value).save_as(xlsx_path)
        sheet = load_workbook(io.BytesIO(xlsx_path.read_bytes())).active
        assert [row[0] for row in sheet.iter_rows(min_row=2, values_only=True)] == [over]

        await rows.first.get_by_role("link", name=f"#{over}").click()
        await expect(page.locator("#status")).to_have_attribute("data-status", "open")
        await expect(page.locator(".record")).to_have_count(3)
        await expect(page.get_by_label("金额（元）")).to_have_value("128.50")
        await page.get_by_label("原因").fill("HIS 未入账，原路退回")
        await page.get_by_role("button", name="申请原路退款").click()
        await expect(page.locator("#flash")).to_be_visible()
        await expect(page.locator("#status")).to_have_attribute("data-status", "proposed")
        await expect(page.get_by_role("button", name="批准退款")).to_have_count(0)
        await page.screenshot(path=shots / "04-proposed-by-clerk.png", full_page=True)

        token = await page.locator('input[name="csrf"]').first.input_value()
        forged = await page.request.post(
            f"{base}/console/exceptions/{over}/approve", form={"csrf": token, "note": "self-approval"}
        )
        assert forged.status == 403 and console.channel.calls["refund"] == 0

        await sign_out(page)
        await sign_in(page, base, "approver1")
        await page.goto(f"{base}/console/exceptions/{over}")
        await expect(page.locator("#pending")).to_contain_text("clerk1")
        await page.screenshot(path=shots / "05-awaiting-approval.png", full_page=True)
        await page.get_by_role("button", name="批准退款").click()
        await expect(page.locator("#status")).to_have_attribute("data-status", "closed")
        await expect(page.locator("#flash")).to_contain_text("已原路退回")
        [(out_refund_no, refund)] = console.channel.refunds.items()
        assert refund["out_trade_no"] == order.out_trade_no and refund["amount"] == 128_50
        await expect(page.locator("#reference")).to_have_text(out_refund_no)
        await page.screenshot(path=shots / "06-approved-and-refunded.png", full_page=True)

        await sign_out(page)
        await sign_in(page, base, "clerk1")
        await page.goto(f"{base}/console/exceptions/{under}")
        await expect(page.locator("#propose-form")).to_have_count(0)
        await page.locator("#handle-form").get_by_label("说明").fill("患者已到窗口补缴现金，收据 X123")
        await page.get_by_role("button", name="标记为已处理").click()
        await expect(page.locator("#status")).to_have_attribute("data-status", "handled")
        await expect(page.locator("#history")).to_contain_text("console.marked_handled")
        await page.screenshot(path=shots / "07-under-collection-handled.png", full_page=True)

        await page.set_viewport_size(TABLET)
        await page.goto(f"{base}/console/exceptions/{over}")
        await page.screenshot(path=shots / "08-exception-tablet.png", full_page=True)
        await page.goto(f"{base}/console/")
        await page.screenshot(path=shots / "09-summary-tablet.png", full_page=True)

    assert (await recon.get_exception(console.db, under))["note"] == "患者已到窗口补缴现金，收据 X123"
    assert len(list(shots.glob("*.png"))) == 9
