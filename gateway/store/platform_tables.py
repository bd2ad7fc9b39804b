"""The tables of a platform serving many hospitals (migration 0010): app keys that rotate, the tenants' change
counter every instance watches, leases that give each scheduled job (a hospital-day's reconciliation, the
daily archive) to exactly one instance, registration slots held for apps, and the archives retention wrote.

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module).
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, Money, UtcDateTime, metadata

JOB_STATES = ("due", "running", "done", "failed")
LOCK_STATES = ("locking", "locked", "failed", "used", "releasing", "released")
ARCHIVE_STATES = ("written", "verified", "removed", "restored")

app_keys = sa.Table(
    "app_keys",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("apps.id"), nullable=False, index=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("public_key_pem", sa.Text, nullable=False),
    sa.Column("added_at", UtcDateTime, nullable=False),
    sa.Column("valid_from", UtcDateTime),
    sa.Column("retire_at", UtcDateTime),
    sa.UniqueConstraint("app_id", "name"),
)
"""An app's public keys. A request verifies against any key valid at that moment (``valid_from`` passed or null,
``retire_at`` not reached or null): during a rotation the old and the new key both work, until the old one's
``retire_at``."""

tenants_version = sa.Table(
    "tenants_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("changed_at", UtcDateTime, nullable=False),
)
"""One row: bumped in the transaction of every change to a hospital, app or merchant. Instances poll it (and on
PostgreSQL are woken by ``NOTIFY``) and reload what changed."""

job_leases = sa.Table(
    "job_leases",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(16), nullable=False),
    sa.Column("hospital_id", sa.String(32), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("instance", sa.String(64)),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("due_at", UtcDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.UniqueConstraint("job", "hospital_id", "day"),
    sa.Index(None, "job", "due_at"),
    sa.CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in JOB_STATES) + ")", name="state"),
)
"""One scheduled job (``recon`` of a hospital's day; ``archive`` of a day, hospital ``*``). ``due_at`` is when
an instance may claim it: now for a due job, the end of the lease for a running one (so a job whose instance
died is claimable once its lease expires), the retry time for a failed one, null when done. ``run_id``: the
``recon_runs`` row of the current attempt."""

registration_locks = sa.Table(
    "registration_locks",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("lock_no", sa.String(64), nullable=False),
    sa.Column("trade_no", sa.String(32), nullable=False, unique=True),
    sa.Column("patient_id", sa.String(64), nullable=False),
    sa.Column("schedule_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("lock_id", sa.String(64)),
    sa.Column("amount_fen", Money),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("order_business_no", sa.String(64)),
    sa.Column("his_error", sa.JSON),
    sa.Column("release_reason", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("hospital_id", "lock_no"),
    sa.Index(None, "hospital_id", "lock_id"),
    sa.Index(None, "due_at"),
    sa.Index(None, "state"),
    sa.CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in LOCK_STATES) + ")", name="state"),
)
"""A registration slot an app holds through the gateway while the patient pays. ``trade_no`` is ours: the HIS
ties the lock to it and releases it only for it. ``order_business_no``: the one order that may pay for the
slot; when it closes unpaid the slot is released (``releasing`` → ``released``), when it is paid the lock is
``used``."""

archives = sa.Table(
    "archives",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("cutoff", UtcDateTime, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("manifest", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("verified_at", UtcDateTime),
    sa.Column("removed_at", UtcDateTime),
    sa.Column("restored_at", UtcDateTime),
    sa.Index(None, "table_name", "state"),
    sa.CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in ARCHIVE_STATES) + ")", name="state"),
)
"""One archive file: the rows of one table (with their dependants) older than ``cutoff``, as compressed JSON
lines, with a manifest (counts, money totals, key ranges, the audit chain's head) whose hash is ``sha256``'s
companion in the file. Rows are removed from the database only once the file is verified against them."""
