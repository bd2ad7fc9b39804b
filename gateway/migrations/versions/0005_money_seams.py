"""Money seams: exceptions raised by the sagas beside reconciliation's, evidence kept by entry key instead of a
clock-window suspense pool, the HIS's daily detail, and proposals that say what they do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 20:30:00

Held suspense items become observations of the day they were held, so the first run after the upgrade weighs
them like any other evidence.
"""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RECON = "'over_collection', 'under_collection', 'amount_mismatch', 'status_mismatch', 'duplicate', 'cross_day'"
GATEWAY = (
    "'his_stuck', 'his_rejected', 'paid_after_close', 'his_refund_not_paid', 'writeback_failed',"
    " 'refund_abnormal', 'refund_late_success', 'his_receipt_on_held'"
)
OLD_STATES = "'proposed', 'approved', 'rejected', 'done', 'failed'"


def upgrade() -> None:
    with op.batch_alter_table("recon_exceptions") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="recon", nullable=False))
        batch.drop_constraint(op.f("uq_recon_exceptions_hospital_id_entry_key"), type_="unique")
        batch.drop_constraint(op.f("ck_recon_exceptions_class"), type_="check")
        batch.create_unique_constraint(
            op.f("uq_recon_exceptions_hospital_id_source_entry_key"), ["hospital_id", "source", "entry_key"]
        )
        batch.create_check_constraint(op.f("ck_recon_exceptions_class"), f"class IN ({RECON}, {GATEWAY})")
        batch.create_check_constraint(op.f("ck_recon_exceptions_source"), "source IN ('recon', 'gateway')")
    op.create_index(
        op.f("ix_recon_exceptions_hospital_id_out_trade_no"), "recon_exceptions", ["hospital_id", "out_trade_no"]
    )

    with op.batch_alter_table("refund_proposals") as batch:
        batch.add_column(sa.Column("action", sa.String(length=24), server_default="refund", nullable=False))
        batch.add_column(sa.Column("target_refund_id", ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_refund_proposals_target_refund_id_refunds"), "refunds", ["target_refund_id"], ["id"]
        )
        batch.drop_constraint(op.f("ck_refund_proposals_state"), type_="check")
        batch.create_check_constraint(op.f("ck_refund_proposals_state"), f"state IN ({OLD_STATES}, 'cancelled')")
        batch.create_check_constraint(
            op.f("ck_refund_proposals_action"), "action IN ('refund', 'pay_refund', 'cancel_his_refund')"
        )

    with op.batch_alter_table("refunds") as batch:
        batch.add_column(sa.Column("his_round", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("recon_runs") as batch:
        batch.add_column(sa.Column("by_channel", sa.JSON(), nullable=True))

    observations = op.create_table(
        "recon_observations",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("entry_key", sa.String(length=80), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("flag", sa.SmallInteger(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.CheckConstraint("side IN ('his', 'platform', 'channel')", name=op.f("ck_recon_observations_side")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["hospitals.id"], name=op.f("fk_recon_observations_hospital_id_hospitals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_observations")),
    )
    op.create_index(
        op.f("ix_recon_observations_hospital_id_entry_key"), "recon_observations", ["hospital_id", "entry_key"]
    )
    op.create_index(op.f("ix_recon_observations_hospital_id_day"), "recon_observations", ["hospital_id", "day"])

    op.create_table(
        "his_details",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("pay_count", sa.Integer(), nullable=False),
        sa.Column("refund_count", sa.Integer(), nullable=False),
        sa.Column("pay_fen", sa.BigInteger(), nullable=False),
        sa.Column("refund_fen", sa.BigInteger(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"], name=op.f("fk_his_details_hospital_id_hospitals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_his_details")),
        sa.UniqueConstraint("hospital_id", "day", "sha256", name=op.f("uq_his_details_hospital_id_day_sha256")),
    )
    op.create_index(op.f("ix_his_details_hospital_id_day"), "his_details", ["hospital_id", "day"])

    _held_suspense_to_observations(observations)
    op.drop_index(op.f("ix_recon_suspense_hospital_id_state"), table_name="recon_suspense")
    op.drop_table("recon_suspense")


def _held_suspense_to_observations(observations: sa.Table) -> None:
    conn = op.get_bind()
    suspense = sa.table(
        "recon_suspense",
        sa.column("hospital_id", sa.String),
        sa.column("entry_key", sa.String),
        sa.column("first_day", sa.Date),
        sa.column("state", sa.String),
        sa.column("records", sa.JSON),
    )
    rows = []
    for item in conn.execute(sa.select(suspense).where(suspense.c.state == "held")):
        records = item.records if isinstance(item.records, dict) else json.loads(item.records or "{}")
        day = item.first_day if isinstance(item.first_day, dt.date) else dt.date.fromisoformat(str(item.first_day))
        for side, value in records.items():
            amount, epoch, flag = value["entry"]
            rows.append(
                {
                    "hospital_id": item.hospital_id,
                    "entry_key": item.entry_key,
                    "side": side,
                    "day": day,
                    "amount_fen": int(amount),
                    "at": dt.datetime.fromtimestamp(int(epoch), dt.UTC),
                    "flag": int(flag),
                    "record": value.get("record"),
                }
            )
    if rows:
        op.bulk_insert(observations, rows)


def downgrade() -> None:
    op.create_table(
        "recon_suspense",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("entry_key", sa.String(length=80), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resolved_day", sa.Date(), nullable=True),
        sa.Column("records", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('held', 'cleared', 'flagged')", name=op.f("ck_recon_suspense_state")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["hospitals.id"], name=op.f("fk_recon_suspense_hospital_id_hospitals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_suspense")),
        sa.UniqueConstraint("hospital_id", "entry_key", name=op.f("uq_recon_suspense_hospital_id_entry_key")),
    )
    op.create_index(op.f("ix_recon_suspense_hospital_id_state"), "recon_suspense", ["hospital_id", "state"])
    op.drop_index(op.f("ix_his_details_hospital_id_day"), table_name="his_details")
    op.drop_table("his_details")
    op.drop_index(op.f("ix_recon_observations_hospital_id_day"), table_name="recon_observations")
    op.drop_index(op.f("ix_recon_observations_hospital_id_entry_key"), table_name="recon_observations")
    op.drop_table("recon_observations")
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("his_round")
    with op.batch_alter_table("recon_runs") as batch:
        batch.drop_column("by_channel")
    op.execute(
        "DELETE FROM refund_proposals WHERE action != 'refund' OR state = 'cancelled'"
        " OR exception_id IN (SELECT id FROM recon_exceptions WHERE source = 'gateway')"
    )
    with op.batch_alter_table("refund_proposals") as batch:
        batch.drop_constraint(op.f("ck_refund_proposals_action"), type_="check")
        batch.drop_constraint(op.f("ck_refund_proposals_state"), type_="check")
        batch.create_check_constraint(op.f("ck_refund_proposals_state"), f"state IN ({OLD_STATES})")
        batch.drop_constraint(op.f("fk_refund_proposals_target_refund_id_refunds"), type_="foreignkey")
        batch.drop_column("target_refund_id")
        batch.drop_column("action")
    op.drop_index(op.f("ix_recon_exceptions_hospital_id_out_trade_no"), table_name="recon_exceptions")
    op.execute("DELETE FROM recon_exceptions WHERE source = 'gateway'")
    with op.batch_alter_table("recon_exceptions") as batch:
        batch.drop_constraint(op.f("ck_recon_exceptions_source"), type_="check")
        batch.drop_constraint(op.f("ck_recon_exceptions_class"), type_="check")
        batch.create_check_constraint(op.f("ck_recon_exceptions_class"), f"class IN ({RECON})")
        batch.drop_constraint(op.f("uq_recon_exceptions_hospital_id_source_entry_key"), type_="unique")
        batch.create_unique_constraint(op.f("uq_recon_exceptions_hospital_id_entry_key"), ["hospital_id", "entry_key"])
        batch.drop_column("source")
