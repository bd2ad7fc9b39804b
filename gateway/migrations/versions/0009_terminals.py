"""Payments and refunds from the hospital's own terminals: origin, terminal and the caller's request id on
orders and refunds; who tells the HIS after a payment (per hospital, per app, fixed on each order); agent apps;
window refunds found by the HIS's own refund number (reconciliation).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hospitals", sa.Column("his_commit", sa.String(length=16), server_default="gateway", nullable=False))
    op.add_column("apps", sa.Column("kind", sa.String(length=16), server_default="app", nullable=False))
    op.add_column("apps", sa.Column("his_commit", sa.String(length=16), nullable=True))
    op.add_column("apps", sa.Column("client_cert_cn", sa.String(length=200), nullable=True))
    op.add_column("orders", sa.Column("origin", sa.String(length=16), server_default="app", nullable=False))
    op.add_column("orders", sa.Column("terminal_id", sa.String(length=32), nullable=True))
    op.add_column("orders", sa.Column("request_id", sa.String(length=64), nullable=True))
    op.add_column("orders", sa.Column("his_commit", sa.String(length=16), server_default="gateway", nullable=False))
    op.create_index(op.f("ix_orders_app_id_request_id"), "orders", ["app_id", "request_id"], unique=True)
    op.create_index(
        op.f("ix_orders_hospital_id_terminal_id_created_at"), "orders", ["hospital_id", "terminal_id", "created_at"]
    )
    op.add_column("refunds", sa.Column("app_id", sa.String(length=64), nullable=True))
    op.add_column("refunds", sa.Column("terminal_id", sa.String(length=32), nullable=True))
    op.add_column("refunds", sa.Column("request_id", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_refunds_app_id_request_id"), "refunds", ["app_id", "request_id"], unique=True)
    op.create_index(
        op.f("ix_refunds_hospital_id_terminal_id_created_at"), "refunds", ["hospital_id", "terminal_id", "created_at"]
    )
    op.create_index(op.f("ix_refunds_hospital_id_his_refund_id"), "refunds", ["hospital_id", "his_refund_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_refunds_hospital_id_his_refund_id"), table_name="refunds")
    op.drop_index(op.f("ix_refunds_hospital_id_terminal_id_created_at"), table_name="refunds")
    op.drop_index(op.f("ix_refunds_app_id_request_id"), table_name="refunds")
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("request_id")
        batch.drop_column("terminal_id")
        batch.drop_column("app_id")
    op.drop_index(op.f("ix_orders_hospital_id_terminal_id_created_at"), table_name="orders")
    op.drop_index(op.f("ix_orders_app_id_request_id"), table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("his_commit")
        batch.drop_column("request_id")
        batch.drop_column("terminal_id")
        batch.drop_column("origin")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("client_cert_cn")
        batch.drop_column("his_commit")
        batch.drop_column("kind")
    with op.batch_alter_table("hospitals") as batch:
        batch.drop_column("his_commit")
