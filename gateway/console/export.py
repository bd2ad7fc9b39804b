"""Exports of the filtered exception list: CSV in UTF-8 with a BOM (so that Excel on a Chinese Windows opens
it as UTF-8 rather than GBK) and XLSX through openpyxl. Amounts are yuan from integer fen: text with two
decimals in the CSV, exact Decimals shown with two decimals in the workbook."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Sequence
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font

from gateway.console.formatting import local_time, yuan, yuan_decimal
from gateway.console.i18n import Translate

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MONEY = ("his_fen", "platform_fen", "channel_fen")


def _columns(t: Translate, hospitals: dict[str, str]) -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    def money(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: r.get(key)

    return [
        (t("field.id"), lambda r: r["id"]),
        (t("field.day"), lambda r: r["day"].isoformat()),
        (t("field.hospital"), lambda r: hospitals.get(r["hospital_id"], r["hospital_id"])),
        (t("field.channel"), lambda r: t(f"channel.{r['channel']}") if r.get("channel") else ""),
        (t("field.class"), lambda r: t(f"class.{r['class']}")),
        (t("field.status"), lambda r: t(f"status.{r['status']}")),
        (t("field.entry"), lambda r: t(f"entry.{r['entry_type']}")),
        (t("field.out_trade_no"), lambda r: r.get("out_trade_no") or ""),
        (t("field.out_refund_no"), lambda r: r.get("out_refund_no") or ""),
        (t("field.channel_trade_no"), lambda r: r.get("channel_trade_no") or ""),
        (t("field.his_receipt_no"), lambda r: r.get("his_receipt_no") or ""),
        (t("field.his_fen"), money("his_fen")),
        (t("field.platform_fen"), money("platform_fen")),
        (t("field.channel_fen"), money("channel_fen")),
        (t("field.detail"), lambda r: r.get("detail") or ""),
        (t("field.note"), lambda r: r.get("note") or ""),
        (t("field.reference"), lambda r: r.get("reference") or ""),
        (t("field.handled_by"), lambda r: r.get("handled_by") or ""),
        (t("field.handled_at"), lambda r: local_time(r.get("handled_at"))),
        # Last, and the same in every language: what a spreadsheet's formulas and other tools key on.
        (t("field.class_code"), lambda r: r["class"]),
    ]


def _money_columns(columns: Sequence[tuple[str, Any]], t: Translate) -> set[int]:
    names = {t(f"field.{m}") for m in MONEY}
    return {i for i, (name, _) in enumerate(columns) if name in names}


def _safe(value: Any) -> Any:
    """A cell that starts like a formula is written as text: exports must not run anything in a spreadsheet."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: Sequence[dict[str, Any]], t: Translate, hospitals: dict[str, str]) -> bytes:
    columns = _columns(t, hospitals)
    money = _money_columns(columns, t)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([name for name, _ in columns])
    for r in rows:
        writer.writerow(
            [yuan(get(r), grouped=False) if i in money else _safe(get(r)) for i, (_, get) in enumerate(columns)]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def to_xlsx(rows: Sequence[dict[str, Any]], t: Translate, hospitals: dict[str, str]) -> bytes:
    columns = _columns(t, hospitals)
    money = _money_columns(columns, t)
    wb = Workbook(write_only=False)
    ws = wb.active
    ws.title = t("export.sheet")[:31]
    ws.append([name for name, _ in columns])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in rows:
        ws.append([yuan_decimal(get(r)) if i in money else _safe(get(r)) for i, (_, get) in enumerate(columns)])
    for i in money:
        for (cell,) in ws.iter_rows(min_row=2, min_col=i + 1, max_col=i + 1):
            cell.number_format = "#,##0.00"
    ws.freeze_panes = "A2"
    for i, (name, _) in enumerate(columns):
        ws.column_dimensions[ws.cell(row=1, column=i + 1).column_letter].width = max(10, min(40, len(name) * 2 + 4))
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue()


def filename(day_from: dt.date | None, day_to: dt.date | None, ext: str) -> str:
    span = "-".join(d.isoformat() for d in (day_from, day_to) if d is not None) or "all"
    return f"recon-exceptions-{span}.{ext}"
