"""Every table of the gateway on the one ``metadata``: importing this module registers them all, for Alembic's
autogenerate and the test that the migrations and the tables never drift apart."""

from __future__ import annotations

from gateway.store import (
    channel_tables,
    console_tables,
    platform_tables,
    recon_tables,
    sms_tables,
    tables,
)
from gateway.store.schema import metadata

__all__ = ["channel_tables", "console_tables", "metadata", "platform_tables", "recon_tables", "sms_tables", "tables"]
