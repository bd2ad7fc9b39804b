"""The gateway's tables, in SQLAlchemy Core. The Alembic migrations in ``gateway/migrations`` create them; a test
checks that the two never drift apart.

Money is integer fen (BIGINT). Idempotency lives in unique keys, so a retried request or a duplicated callback
meets the row its first attempt wrote instead of making a second one. Rows that a worker processes carry
``due_at``: a worker claims a due row by moving ``due_at`` past its lease, so a claim survives the short
transaction that made it while the work (a channel or HIS call) runs outside any transaction. Orders also
record the lease itself (``leased_until``): a business request may then act on an order at once, unless a
worker holds it.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, Money, UtcDateTime, metadata


def _id() -> sa.Column[int]:
    return sa.Column("id", Id, primary_key=True, autoincrement=True)


hospitals = sa.Table(
    "hospitals",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("refund_policy", sa.String(16), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("his_commit", sa.String(16), nullable=False, server_default="gateway"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("recon_at", sa.String(5)),
    sa.Column("bridge", sa.JSON),
    sa.Column("read_cache", sa.JSON),
    sa.Column("source", sa.String(16), nullable=False, server_default="config"),
    sa.CheckConstraint("refund_policy IN ('auto_refund', 'finance')", name="refund_policy"),
)
"""A hospital is a tenant (migration 0010): ``bridge`` is its agent link (addresses and file paths of its
certificates and keys, never their content), ``read_cache`` how long each HIS read may be served from memory,
``source`` who manages the row (``config``: the gateway config's block, re-imported at every start; ``cli``,
``console``, ``import``: the database, which the config no longer overrides)."""

merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False, index=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("settings", sa.JSON),
    sa.Column("source", sa.String(16), nullable=False, server_default="config"),
)
"""``settings``: the channel's settings with secrets as references (``{file = …}``, ``{env = …}``, key files)."""

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False, index=True),
    sa.Column("public_key_pem", sa.Text, nullable=False),
    sa.Column("notify_url", sa.String(500)),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("notify_hosts", sa.JSON),
    sa.Column("kind", sa.String(16), nullable=False, server_default="app"),
    sa.Column("his_commit", sa.String(16)),
    sa.Column("client_cert_cn", sa.String(200)),
    sa.Column("operations", sa.JSON),
    sa.Column("source", sa.String(16), nullable=False, server_default="config"),
)
"""``notify_hosts``: the hosts an order's ``notify_url`` may name (migration 0008). ``public_key_pem`` is the
app's newest key; all its keys, with their validity, are in ``app_keys``. ``operations``: what the app may call
(``gateway.api.permissions``; null: the money operations)."""

api_nonces = sa.Table(
    "api_nonces",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
)

orders = sa.Table(
    "orders",
    metadata,
    _id(),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("business_order_no", sa.String(64), nullable=False),
    sa.Column("out_trade_no", sa.String(32), nullable=False, unique=True),
    sa.Column("request_digest", sa.String(64), nullable=False),
    sa.Column("business_type", sa.String(16), nullable=False),
    sa.Column("scene", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("his_params", sa.JSON, nullable=False),
    sa.Column("notify_url", sa.String(500)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("pay_params", sa.JSON),
    sa.Column("channel_trade_no", sa.String(64)),
    sa.Column("paid_fen", Money),
    sa.Column("paid_at", UtcDateTime),
    sa.Column("refunded_fen", Money, nullable=False, server_default="0"),
    sa.Column("his_state", sa.String(16), nullable=False),
    sa.Column("his_receipt_no", sa.String(64)),
    sa.Column("his_error", sa.JSON),
    sa.Column("exception", sa.String(32)),
    sa.Column("exception_detail", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("close_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("due_at", UtcDateTime),
    sa.Column("leased_until", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("origin", sa.String(16), nullable=False, server_default="app"),
    sa.Column("terminal_id", sa.String(32)),
    sa.Column("request_id", sa.String(64)),
    sa.Column("his_commit", sa.String(16), nullable=False, server_default="gateway"),
    sa.UniqueConstraint("hospital_id", "business_order_no"),
    sa.Index(None, "due_at"),
    sa.Index(None, "hospital_id", "created_at"),
    sa.Index(None, "app_id", "request_id", unique=True),
    sa.Index(None, "hospital_id", "terminal_id", "created_at"),
    sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
    sa.CheckConstraint("refunded_fen >= 0 AND refunded_fen <= COALESCE(paid_fen, 0)", name="refunded_within_paid"),
)

refunds = sa.Table(
    "refunds",
    metadata,
    _id(),
    sa.Column("order_id", Id, sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("business_refund_no", sa.String(64)),
    sa.Column("out_refund_no", sa.String(64), nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("his_refundable_fen", Money),
    sa.Column("his_refund_id", sa.String(64)),
    sa.Column("his_receipt_no", sa.String(64)),
    sa.Column("channel_refund_no", sa.String(64)),
    sa.Column("refunded_at", UtcDateTime),
    sa.Column("exception", sa.String(32)),
    sa.Column("exception_detail", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("his_round", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("app_id", sa.String(64)),
    sa.Column("terminal_id", sa.String(32)),
    sa.Column("request_id", sa.String(64)),
    sa.UniqueConstraint("hospital_id", "business_refund_no"),
    sa.Index(None, "app_id", "request_id", unique=True),
    sa.Index(None, "hospital_id", "terminal_id", "created_at"),
    sa.Index(None, "hospital_id", "his_refund_id"),
    sa.UniqueConstraint("channel", "out_refund_no"),
    sa.Index(None, "due_at"),
    sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
)

channel_events = sa.Table(
    "channel_events",
    metadata,
    _id(),
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("notification_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("processed_at", UtcDateTime),
    sa.Column("outcome", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("due_at", UtcDateTime),
    sa.UniqueConstraint("merchant_id", "notification_id"),
    sa.Index(None, "due_at"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    _id(),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("subject_key", sa.String(128), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("notify_url", sa.String(500)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    sa.Column("due_at", UtcDateTime),
    sa.UniqueConstraint("event_type", "subject_key"),
    sa.Index(None, "due_at"),
    sa.Index(None, "app_id", "id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    _id(),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("detail", sa.JSON),
    sa.Column("chain_seq", sa.BigInteger),
    sa.Column("prev_hash", sa.String(64)),
    sa.Column("row_hash", sa.String(64)),
    sa.Index(None, "subject"),
    sa.Index(None, "chain_seq", unique=True),
)
"""Tamper-evident: ``gateway.store.audit`` chains each sealed row to the one before it (migration 0008)."""
