"""The SMS defences' tables: one code per (hospital, purpose, phone), and the fixed-window counters when they
live in the database (``sms.counters = "database"``).

Declared on the gateway's one ``metadata`` (``gateway.store.tables`` imports this module), created by migrations
0004 and 0006. No phone number or code is stored in the clear: phones as HMACs (plus a mask for operators), codes as an
HMAC for checking and sealed with a key outside the database for resending within their life.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.schema import Id, UtcDateTime, metadata

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
    sa.Column("scopes", sa.Text),
    sa.Column("identity_hash", sa.String(64)),
    sa.Column("outcome", sa.String(8)),
    sa.Column("outcome_at", UtcDateTime),
    sa.UniqueConstraint("hospital_id", "purpose", "phone_hash"),
    sa.Index("ix_sms_codes_pending", "outcome", "created_at"),
)
"""``scopes``, ``outcome`` and ``outcome_at`` (migration 0006) feed the conversion layer: the scopes a code was
sent under, and whether it was ``verified`` or ``failed`` (never verified within the grace) — ``None`` while
pending."""

sms_trust = sa.Table(
    "sms_trust",
    metadata,
    sa.Column("hospital_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("subject_hash", sa.String(64), primary_key=True),
    sa.Column("first_verified_at", UtcDateTime, nullable=False),
    sa.Column("last_verified_at", UtcDateTime, nullable=False, index=True),
    sa.Column("verified", sa.Integer, nullable=False, server_default="1"),
)
"""Phones and app identities that have verified a code at a hospital (migration 0006): a pump cannot make a
number verify, so a number with this history is a patient's."""

sms_counters = sa.Table(
    "sms_counters",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)
"""``expires_at`` is in epoch seconds: a counter's window is in its key; the expiry only says when it may go."""

sms_escalations = sa.Table(
    "sms_escalations",
    metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("since", UtcDateTime, nullable=False),
    sa.Column("held_until", UtcDateTime, nullable=False),
    sa.Column("verified", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("band", sa.Float, nullable=False),
)
"""The conversion layer's escalated scopes (migration 0006), shared by every instance: a scope stays at its level
until ``held_until`` unless its verify rate is confidently back in band."""
