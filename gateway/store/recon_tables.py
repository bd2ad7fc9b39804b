"""Reconciliation's tables: statements as delivered, runs, the exceptions finance works, the cross-day pool.

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module), created by migration
0002. The shapes and the meaning of every class and status are in docs/RECONCILIATION.md; the finance console
builds against them.

An exception is keyed by ``(hospital_id, entry_key)`` where ``entry_key`` is ``pay:<out_trade_no>`` or
``refund:<out_refund_no>``: a re-run of a day updates the row it found before (``last_version``, amounts, the
three records) and never touches what finance wrote (``status``, ``note``, ``reference``, ``handled_*``).
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.tables import Id, Money, UtcDateTime, metadata

EXCEPTION_CLASSES = (
    "over_collection",
    "under_collection",
    "amount_mismatch",
    "status_mismatch",
    "duplicate",
    "cross_day",
)
EXCEPTION_STATUSES = ("open", "proposed", "approved", "handled", "closed")

statements = sa.Table(
    "statements",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("row_count", sa.Integer),
    sa.Column("pay_count", sa.Integer),
    sa.Column("refund_count", sa.Integer),
    sa.Column("pay_fen", Money),
    sa.Column("refund_fen", Money),
    sa.Column("fee_fen", Money),
    sa.Column("fetched_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("merchant_id", "day", "sha256"),
    sa.Index(None, "hospital_id", "day"),
    sa.CheckConstraint("status IN ('parsed', 'failed')", name="status"),
)

recon_runs = sa.Table(
    "recon_runs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("his_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("platform_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("channel_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("his_fen", Money, nullable=False, server_default="0"),
    sa.Column("platform_fen", Money, nullable=False, server_default="0"),
    sa.Column("channel_fen", Money, nullable=False, server_default="0"),
    sa.Column("fee_fen", Money, nullable=False, server_default="0"),
    sa.Column("matched", sa.Integer, nullable=False, server_default="0"),
    sa.Column("over_collection", sa.Integer, nullable=False, server_default="0"),
    sa.Column("under_collection", sa.Integer, nullable=False, server_default="0"),
    sa.Column("amount_mismatch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status_mismatch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("duplicate", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cross_day", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cleared", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("hospital_id", "day", "version"),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),
)

recon_exceptions = sa.Table(
    "recon_exceptions",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("first_version", sa.Integer, nullable=False),
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("last_day", sa.Date, nullable=False),
    sa.Column("entry_key", sa.String(80), nullable=False),
    sa.Column("entry_type", sa.String(8), nullable=False),
    sa.Column("class", sa.String(24), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("channel", sa.String(16)),
    sa.Column("merchant_id", sa.String(64)),
    sa.Column("out_trade_no", sa.String(64)),
    sa.Column("out_refund_no", sa.String(64)),
    sa.Column("channel_trade_no", sa.String(64)),
    sa.Column("his_trade_no", sa.String(64)),
    sa.Column("his_receipt_no", sa.String(64)),
    sa.Column("his_fen", Money),
    sa.Column("platform_fen", Money),
    sa.Column("channel_fen", Money),
    sa.Column("his_record", sa.JSON),
    sa.Column("platform_record", sa.JSON),
    sa.Column("channel_record", sa.JSON),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("reference", sa.String(128)),
    sa.Column("handled_by", sa.String(64)),
    sa.Column("handled_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("hospital_id", "entry_key"),
    sa.Index(None, "hospital_id", "day"),
    sa.Index(None, "status"),
    sa.CheckConstraint("entry_type IN ('pay', 'refund')", name="entry_type"),
    sa.CheckConstraint("class IN (" + ", ".join(f"'{c}'" for c in EXCEPTION_CLASSES) + ")", name="class"),
    sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in EXCEPTION_STATUSES) + ")", name="status"),
)

recon_suspense = sa.Table(
    "recon_suspense",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("entry_key", sa.String(80), nullable=False),
    sa.Column("first_day", sa.Date, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("resolved_day", sa.Date),
    sa.Column("records", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("hospital_id", "entry_key"),
    sa.Index(None, "hospital_id", "state"),
    sa.CheckConstraint("state IN ('held', 'cleared', 'flagged')", name="state"),
)
