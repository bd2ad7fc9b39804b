"""The finance console's tables: its users, their sessions, failed logins (for the login pause), and refund
proposals for over-collections (a clerk proposes, a different approver decides).

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module), created by migration
0003. A proposal refers to the reconciliation exception it settles and, once approved, to the refund that
carries the money back; the exception's own status (``proposed``, ``approved``, ``closed``) follows it.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, Money, UtcDateTime, metadata

CONSOLE_ROLES = ("viewer", "clerk", "approver", "admin")
PROPOSAL_STATES = ("proposed", "approved", "rejected", "done", "failed", "cancelled")
PROPOSAL_ACTIONS = ("refund", "pay_refund", "cancel_his_refund")
"""What an approved proposal does: ``refund`` money the HIS does not hold back to the payer; ``pay_refund`` pay
out a refund the HIS applied but the channel never paid; ``cancel_his_refund`` undo that application at the
HIS (``refund.cancel``) instead."""

console_users = sa.Table(
    "console_users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("role IN (" + ", ".join(f"'{r}'" for r in CONSOLE_ROLES) + ")", name="role"),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("console_users.id"), nullable=False, index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
)
"""A session's id is the SHA-256 of the cookie's token: a leaked table does not log anyone in."""

console_login_failures = sa.Table(
    "console_login_failures",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index(None, "username", "at"),
    sa.Index(None, "ip", "at"),
)

refund_proposals = sa.Table(
    "refund_proposals",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("exception_id", Id, sa.ForeignKey("recon_exceptions.id"), nullable=False, index=True),
    sa.Column("order_id", Id, sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("action", sa.String(24), nullable=False, server_default="refund"),
    sa.Column("target_refund_id", Id, sa.ForeignKey("refunds.id")),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("proposed_by", sa.String(64), nullable=False),
    sa.Column("proposed_at", UtcDateTime, nullable=False),
    sa.Column("decided_by", sa.String(64)),
    sa.Column("decided_at", UtcDateTime),
    sa.Column("decision_note", sa.Text),
    sa.Column("refund_id", Id, sa.ForeignKey("refunds.id")),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="amount_positive"),
    sa.CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in PROPOSAL_STATES) + ")", name="state"),
    sa.CheckConstraint("action IN (" + ", ".join(f"'{a}'" for a in PROPOSAL_ACTIONS) + ")", name="action"),
)
