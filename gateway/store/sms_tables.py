"""The SMS defences' tables: one code per (hospital, purpose, phone), and the fixed-window counters when they
live in the database (``sms.counters = "database"``).

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module), created by migration
0004. No phone number or code is stored in the clear: phones as HMACs (plus a mask for operators), codes as an
HMAC for checking and sealed with a key outside the database for resending within their life.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.tables import Id, UtcDateTime, metadata

sms_codes = sa.Table(
    "sms_codes",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("hospital_id", sa.String(32), sa.ForeignKey("hospitals.id"), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("phone_hash", sa.String(64), nullable=False),
    sa.Column("phone_masked", sa.String(16), nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("code_sealed", sa.String(128), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sends", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_sent_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
    sa.Column("used_at", UtcDateTime),
    sa.UniqueConstraint("hospital_id", "purpose", "phone_hash"),
)

sms_counters = sa.Table(
    "sms_counters",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)
"""``expires_at`` is in epoch seconds: a counter's window is in its key; the expiry only says when it may go."""
