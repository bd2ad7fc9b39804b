"""The channels' memory in the database (``gateway.channels.state``), created by migration 0007.

- ``channel_certificates``: certificates a channel handed out at run time, per merchant and serial, so every
  instance verifies with what one of them downloaded.
- ``channel_order_times``: UnionPay's ``txnTime`` of each order sent, written before the request leaves.
- ``channel_key_refresh``: one row per merchant whose certificates are fetched on a schedule; an instance claims
  the due row (``due_at`` moved past a lease, as every worker claims) so one download serves all instances.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, UtcDateTime, metadata

channel_certificates = sa.Table(
    "channel_certificates",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("serial", sa.String(128), nullable=False),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("kept_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("merchant_id", "serial"),
)

channel_order_times = sa.Table(
    "channel_order_times",
    metadata,
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), primary_key=True),
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("txn_time", sa.String(14), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
)

channel_key_refresh = sa.Table(
    "channel_key_refresh",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", sa.String(64), sa.ForeignKey("merchants.id"), nullable=False, unique=True),
    sa.Column("due_at", UtcDateTime, index=True),
    sa.Column("last_ok_at", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
)
