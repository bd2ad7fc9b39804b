"""SMS verification codes and the database-backed rate-limit counters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sms_codes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("phone_masked", sa.String(length=16), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("code_sealed", sa.String(length=128), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sends", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name=op.f("fk_sms_codes_hospital_id_hospitals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_codes")),
        sa.UniqueConstraint(
            "hospital_id", "purpose", "phone_hash", name=op.f("uq_sms_codes_hospital_id_purpose_phone_hash")
        ),
    )
    op.create_index(op.f("ix_sms_codes_expires_at"), "sms_codes", ["expires_at"])
    op.create_table(
        "sms_counters",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sms_counters")),
    )
    op.create_index(op.f("ix_sms_counters_expires_at"), "sms_counters", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sms_counters_expires_at"), table_name="sms_counters")
    op.drop_table("sms_counters")
    op.drop_index(op.f("ix_sms_codes_expires_at"), table_name="sms_codes")
    op.drop_table("sms_codes")
