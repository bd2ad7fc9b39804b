"""T+1 three-way reconciliation: HIS ↔ platform (information flow), platform ↔ channel (money flow).

See docs/RECONCILIATION.md. ``run_reconciliation`` is the one entry point the scheduler, the CLI and the demo use.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.config import GatewayConfig
from gateway.recon.runs import RunSummary, run_day
from gateway.store.db import Database


async def run_reconciliation(
    db: Database, cfg: GatewayConfig, hospital: str, day: dt.date, **kwargs: Any
) -> RunSummary:
    """Reconcile one hospital's day (a new version of it); see ``gateway.recon.runs.run_day``."""
    return await run_day(db, cfg, hospital, day, **kwargs)
