"""Reconciliation's tables: statements and the HIS's daily detail as delivered, runs, the exceptions finance
works, and the evidence of entries that did not match within one day.

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module), created by migrations
0002 and 0005. The shapes and the meaning of every class and status are in docs/RECONCILIATION.md; the finance
console builds against them.

An exception is keyed by ``(hospital_id, source, entry_key)`` where ``entry_key`` is ``pay:<out_trade_no>`` or
``refund:<out_refund_no>`` and ``source`` says who found it: ``recon`` (a reconciliation run; its class follows
all the evidence of the key, whatever the order in which days are run) or ``gateway`` (the sagas: a stuck HIS
step, a refund the HIS applied but the channel never paid, …). Runs and sagas never overwrite what finance
wrote (``note``, ``reference``, ``handled_*``); the status moves only as docs/RECONCILIATION.md says.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, Money, UtcDateTime, metadata

RECON_CLASSES = (
    "over_collection",
    "under_collection",
    "amount_mismatch",
    "status_mismatch",
    "duplicate",
    "cross_day",
)
"""What a reconciliation run finds (``cross_day``: one-sided, waiting for its counterpart)."""
GATEWAY_CLASSES = (
    "his_stuck",
    "his_rejected",
    "paid_after_close",
    "his_refund_not_paid",
    "writeback_failed",
    "refund_abnormal",
    "refund_late_success",
    "his_receipt_on_held",
)
"""What the sagas raise about one order or refund (``amount_mismatch`` too, shared with reconciliation)."""
EXCEPTION_CLASSES = (*RECON_CLASSES, *GATEWAY_CLASSES)
EXCEPTION_SOURCES = ("recon", "gateway")
EXCEPTION_STATUSES = ("open", "proposed", "approved", "handled", "closed")
OBSERVATION_SIDES = ("his", "platform", "channel")

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
    sa.Column("by_channel", sa.JSON),
    sa.UniqueConstraint("hospital_id", "day", "version"),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),
)

recon_exceptions = sa.Table(
    "recon_exceptions",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("source", sa.String(16), nullable=False, server_default="recon"),
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
    sa.UniqueConstraint("hospital_id", "source", "entry_key"),
    sa.Index(None, "hospital_id", "day"),
    sa.Index(None, "status"),
    sa.Index(None, "hospital_id", "out_trade_no"),
    sa.CheckConstraint("entry_type IN ('pay', 'refund')", name="entry_type"),
    sa.CheckConstraint("source IN (" + ", ".join(f"'{s}'" for s in EXCEPTION_SOURCES) + ")", name="source"),
    sa.CheckConstraint("class IN (" + ", ".join(f"'{c}'" for c in EXCEPTION_CLASSES) + ")", name="class"),
    sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in EXCEPTION_STATUSES) + ")", name="status"),
)

recon_observations = sa.Table(
    "recon_observations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("entry_key", sa.String(80), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("at", UtcDateTime),
    sa.Column("flag", sa.SmallInteger, nullable=False),
    sa.Column("record", sa.JSON),
    sa.Index(None, "hospital_id", "entry_key"),
    sa.Index(None, "hospital_id", "day"),
    sa.CheckConstraint("side IN (" + ", ".join(f"'{s}'" for s in OBSERVATION_SIDES) + ")", name="side"),
)
"""What each side said of an entry on each day, for the entries that did not match within one day: the evidence
a run weighs, whatever day it runs. Rows of a day are replaced when that day is run again."""

his_details = sa.Table(
    "his_details",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("record_count", sa.Integer, nullable=False),
    sa.Column("pay_count", sa.Integer, nullable=False),
    sa.Column("refund_count", sa.Integer, nullable=False),
    sa.Column("pay_fen", Money, nullable=False),
    sa.Column("refund_fen", Money, nullable=False),
    sa.Column("fetched_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("hospital_id", "day", "sha256"),
    sa.Index(None, "hospital_id", "day"),
)
"""The HIS's records of one day as ``recon.fetch`` gave them (gzip of JSON lines, in page order), like a channel
statement: kept with their hash so any record of the three ledgers can be shown and re-read later."""
