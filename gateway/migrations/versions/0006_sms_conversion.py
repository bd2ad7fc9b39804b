"""SMS conversion tracking: the scopes and outcome of each code, the phones and identities that verified, and the
escalated scopes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sms_codes") as batch:
        batch.add_column(sa.Column("scopes", sa.Text(), nullable=True))
        batch.add_column(sa.Column("identity_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("outcome", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_sms_codes_pending", ["outcome", "created_at"])
    op.create_table(
        "sms_trust",
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_hash", sa.String(length=64), nullable=False),
        sa.Column("first_verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("hospital_id", "kind", "subject_hash", name=op.f("pk_sms_trust")),
    )
    op.create_index(op.f("ix_sms_trust_last_verified_at"), "sms_trust", ["last_verified_at"])
    op.create_table(
        "sms_escalations",
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("held_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("band", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_sms_escalations")),
    )


def downgrade() -> None:
    op.drop_table("sms_escalations")
    op.drop_index(op.f("ix_sms_trust_last_verified_at"), table_name="sms_trust")
    op.drop_table("sms_trust")
    with op.batch_alter_table("sms_codes") as batch:
        batch.drop_index("ix_sms_codes_pending")
        batch.drop_column("outcome_at")
        batch.drop_column("outcome")
        batch.drop_column("identity_hash")
        batch.drop_column("scopes")
