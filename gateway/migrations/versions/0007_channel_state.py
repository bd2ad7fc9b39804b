"""The channels' memory: certificates handed out at run time, UnionPay order times, the certificate refresh
schedule shared by all instances.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "channel_certificates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kept_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_channel_certificates_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_certificates")),
        sa.UniqueConstraint("merchant_id", "serial", name=op.f("uq_channel_certificates_merchant_id_serial")),
    )
    op.create_table(
        "channel_order_times",
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("txn_time", sa.String(length=14), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_channel_order_times_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("merchant_id", "order_id", name=op.f("pk_channel_order_times")),
    )
    op.create_index(op.f("ix_channel_order_times_created_at"), "channel_order_times", ["created_at"])
    op.create_table(
        "channel_key_refresh",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_channel_key_refresh_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_key_refresh")),
        sa.UniqueConstraint("merchant_id", name=op.f("uq_channel_key_refresh_merchant_id")),
    )
    op.create_index(op.f("ix_channel_key_refresh_due_at"), "channel_key_refresh", ["due_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_channel_key_refresh_due_at"), table_name="channel_key_refresh")
    op.drop_table("channel_key_refresh")
    op.drop_index(op.f("ix_channel_order_times_created_at"), table_name="channel_order_times")
    op.drop_table("channel_order_times")
    op.drop_table("channel_certificates")
