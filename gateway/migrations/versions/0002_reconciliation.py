"""Reconciliation: statements as delivered, runs, exceptions for finance, the cross-day suspense pool.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_CLASSES = "'over_collection', 'under_collection', 'amount_mismatch', 'status_mismatch', 'duplicate', 'cross_day'"


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def _fen(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "statements",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("row_count", sa.Integer(), nullable=True),
        sa.Column("pay_count", sa.Integer(), nullable=True),
        sa.Column("refund_count", sa.Integer(), nullable=True),
        sa.Column("pay_fen", sa.BigInteger(), nullable=True),
        sa.Column("refund_fen", sa.BigInteger(), nullable=True),
        sa.Column("fee_fen", sa.BigInteger(), nullable=True),
        _time("fetched_at"),
        sa.CheckConstraint("status IN ('parsed', 'failed')", name=op.f("ck_statements_status")),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name=op.f("fk_statements_hospital_id_hospitals")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_statements_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statements")),
        sa.UniqueConstraint("merchant_id", "day", "sha256", name=op.f("uq_statements_merchant_id_day_sha256")),
    )
    op.create_index(op.f("ix_statements_hospital_id_day"), "statements", ["hospital_id", "day"])

    op.create_table(
        "recon_runs",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("started_at"),
        _time("finished_at", nullable=True),
        _count("his_count"),
        _count("platform_count"),
        _count("channel_count"),
        _fen("his_fen"),
        _fen("platform_fen"),
        _fen("channel_fen"),
        _fen("fee_fen"),
        _count("matched"),
        _count("over_collection"),
        _count("under_collection"),
        _count("amount_mismatch"),
        _count("status_mismatch"),
        _count("duplicate"),
        _count("cross_day"),
        _count("cleared"),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f("ck_recon_runs_status")),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name=op.f("fk_recon_runs_hospital_id_hospitals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_runs")),
        sa.UniqueConstraint("hospital_id", "day", "version", name=op.f("uq_recon_runs_hospital_id_day_version")),
    )

    op.create_table(
        "recon_exceptions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("first_version", sa.Integer(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("entry_key", sa.String(length=80), nullable=False),
        sa.Column("entry_type", sa.String(length=8), nullable=False),
        sa.Column("class", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("merchant_id", sa.String(length=64), nullable=True),
        sa.Column("out_trade_no", sa.String(length=64), nullable=True),
        sa.Column("out_refund_no", sa.String(length=64), nullable=True),
        sa.Column("channel_trade_no", sa.String(length=64), nullable=True),
        sa.Column("his_trade_no", sa.String(length=64), nullable=True),
        sa.Column("his_receipt_no", sa.String(length=64), nullable=True),
        sa.Column("his_fen", sa.BigInteger(), nullable=True),
        sa.Column("platform_fen", sa.BigInteger(), nullable=True),
        sa.Column("channel_fen", sa.BigInteger(), nullable=True),
        sa.Column("his_record", sa.JSON(), nullable=True),
        sa.Column("platform_record", sa.JSON(), nullable=True),
        sa.Column("channel_record", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("handled_by", sa.String(length=64), nullable=True),
        _time("handled_at", nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.CheckConstraint(f"class IN ({_CLASSES})", name=op.f("ck_recon_exceptions_class")),
        sa.CheckConstraint("entry_type IN ('pay', 'refund')", name=op.f("ck_recon_exceptions_entry_type")),
        sa.CheckConstraint(
            "status IN ('open', 'proposed', 'approved', 'handled', 'closed')", name=op.f("ck_recon_exceptions_status")
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["hospitals.id"], name=op.f("fk_recon_exceptions_hospital_id_hospitals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_exceptions")),
        sa.UniqueConstraint("hospital_id", "entry_key", name=op.f("uq_recon_exceptions_hospital_id_entry_key")),
    )
    op.create_index(op.f("ix_recon_exceptions_hospital_id_day"), "recon_exceptions", ["hospital_id", "day"])
    op.create_index(op.f("ix_recon_exceptions_status"), "recon_exceptions", ["status"])

    op.create_table(
        "recon_suspense",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("entry_key", sa.String(length=80), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resolved_day", sa.Date(), nullable=True),
        sa.Column("records", sa.JSON(), nullable=False),
        _time("updated_at"),
        sa.CheckConstraint("state IN ('held', 'cleared', 'flagged')", name=op.f("ck_recon_suspense_state")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["hospitals.id"], name=op.f("fk_recon_suspense_hospital_id_hospitals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_suspense")),
        sa.UniqueConstraint("hospital_id", "entry_key", name=op.f("uq_recon_suspense_hospital_id_entry_key")),
    )
    op.create_index(op.f("ix_recon_suspense_hospital_id_state"), "recon_suspense", ["hospital_id", "state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_recon_suspense_hospital_id_state"), table_name="recon_suspense")
    op.drop_table("recon_suspense")
    op.drop_index(op.f("ix_recon_exceptions_status"), table_name="recon_exceptions")
    op.drop_index(op.f("ix_recon_exceptions_hospital_id_day"), table_name="recon_exceptions")
    op.drop_table("recon_exceptions")
    op.drop_table("recon_runs")
    op.drop_index(op.f("ix_statements_hospital_id_day"), table_name="statements")
    op.drop_table("statements")
