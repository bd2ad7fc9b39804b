"""A platform for many hospitals: tenants managed in the database (hospitals with their agent link, merchants
with their channel settings, apps with their allowed operations and rotating keys, a change counter), leases
for scheduled jobs, registration slots held for apps, and retention's archives.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 12:00:00

Existing rows came from the config: they keep ``source = 'config'``, and each app's key becomes its first
``app_keys`` row.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("hospitals") as batch:
        batch.add_column(sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("recon_at", sa.String(length=5), nullable=True))
        batch.add_column(sa.Column("bridge", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("read_cache", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="config", nullable=False))
    with op.batch_alter_table("merchants") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="config", nullable=False))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("operations", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="config", nullable=False))

    app_keys = op.create_table(
        "app_keys",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.Column("valid_from", TS, nullable=True),
        sa.Column("retire_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_app_keys_app_id_apps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_keys")),
        sa.UniqueConstraint("app_id", "name", name=op.f("uq_app_keys_app_id_name")),
    )
    op.create_index(op.f("ix_app_keys_app_id"), "app_keys", ["app_id"])
    conn = op.get_bind()
    now = dt.datetime.now(dt.UTC)
    if conn.dialect.name != "postgresql":
        now = now.replace(tzinfo=None)
    existing = conn.execute(sa.text("SELECT id, public_key_pem FROM apps")).all()
    if existing:
        op.bulk_insert(
            app_keys, [{"app_id": a, "name": "config", "public_key_pem": pem, "added_at": now} for a, pem in existing]
        )

    version = op.create_table(
        "tenants_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants_version")),
    )
    op.bulk_insert(version, [{"id": 1, "version": 1, "changed_at": now}])

    op.create_table(
        "job_leases",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=16), nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("due_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.CheckConstraint("state IN ('due', 'running', 'done', 'failed')", name=op.f("ck_job_leases_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_leases")),
        sa.UniqueConstraint("job", "hospital_id", "day", name=op.f("uq_job_leases_job_hospital_id_day")),
    )
    op.create_index(op.f("ix_job_leases_job_due_at"), "job_leases", ["job", "due_at"])

    op.create_table(
        "registration_locks",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("lock_no", sa.String(length=64), nullable=False),
        sa.Column("trade_no", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lock_id", sa.String(length=64), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("order_business_no", sa.String(length=64), nullable=True),
        sa.Column("his_error", sa.JSON(), nullable=True),
        sa.Column("release_reason", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("due_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('locking', 'locked', 'failed', 'used', 'releasing', 'released')",
            name=op.f("ck_registration_locks_state"),
        ),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_registration_locks_app_id_apps")),
        sa.ForeignKeyConstraint(
            ["hospital_id"], ["hospitals.id"], name=op.f("fk_registration_locks_hospital_id_hospitals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registration_locks")),
        sa.UniqueConstraint("hospital_id", "lock_no", name=op.f("uq_registration_locks_hospital_id_lock_no")),
        sa.UniqueConstraint("trade_no", name=op.f("uq_registration_locks_trade_no")),
    )
    op.create_index(op.f("ix_registration_locks_due_at"), "registration_locks", ["due_at"])
    op.create_index(op.f("ix_registration_locks_hospital_id_lock_id"), "registration_locks", ["hospital_id", "lock_id"])
    op.create_index(op.f("ix_registration_locks_state"), "registration_locks", ["state"])

    op.create_table(
        "archives",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("cutoff", TS, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("removed_at", TS, nullable=True),
        sa.Column("restored_at", TS, nullable=True),
        sa.CheckConstraint("state IN ('written', 'verified', 'removed', 'restored')", name=op.f("ck_archives_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archives")),
    )
    op.create_index(op.f("ix_archives_table_name_state"), "archives", ["table_name", "state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_archives_table_name_state"), table_name="archives")
    op.drop_table("archives")
    op.drop_index(op.f("ix_registration_locks_state"), table_name="registration_locks")
    op.drop_index(op.f("ix_registration_locks_hospital_id_lock_id"), table_name="registration_locks")
    op.drop_index(op.f("ix_registration_locks_due_at"), table_name="registration_locks")
    op.drop_table("registration_locks")
    op.drop_index(op.f("ix_job_leases_job_due_at"), table_name="job_leases")
    op.drop_table("job_leases")
    op.drop_table("tenants_version")
    op.drop_index(op.f("ix_app_keys_app_id"), table_name="app_keys")
    op.drop_table("app_keys")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("source")
        batch.drop_column("operations")
    with op.batch_alter_table("merchants") as batch:
        batch.drop_column("source")
        batch.drop_column("settings")
    with op.batch_alter_table("hospitals") as batch:
        batch.drop_column("source")
        batch.drop_column("read_cache")
        batch.drop_column("bridge")
        batch.drop_column("recon_at")
        batch.drop_column("enabled")
