"""What each retention policy archives, and when a row is old *and finished* enough to leave the database.

A kind is a list of roots: a table, the condition its old rows must meet, and the rows of other tables that go
with each (an order's refunds; an exception's refund proposals). A row still in play is never archived, however
old: an order with a step pending, a refund not final, an exception finance has not closed, a notification not
delivered, an audit row not sealed, a reconciliation day whose keys still wait for a counterpart.

    orders         orders (final, no step due, no open exception, no refund proposal) with their refunds
    callbacks      channel_events processed
    notifications  notifications delivered or given up
    audit          the sealed audit chain's oldest rows, a prefix of it (the chain goes on from its head)
    recon          runs, statements, the HIS's daily detail, evidence of keys no longer open, job leases, and
                   exceptions handled or closed with their refund proposals
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.store.console_tables import refund_proposals
from gateway.store.platform_tables import job_leases
from gateway.store.recon_tables import his_details, recon_exceptions, recon_observations, recon_runs, statements
from gateway.store.tables import audit_log, channel_events, notifications, orders, refunds

FINAL_ORDER = ("completed", "his_rejected", "closed", "failed")
FINAL_REFUND = ("completed", "rejected", "failed", "cancelled")
CLOSED_EXCEPTION = ("handled", "closed")


@dataclass(frozen=True)
class Context:
    cutoff: dt.datetime
    """Rows older than this go."""
    now: dt.datetime
    audit_head: int | None = None
    """The newest chain position all of whose predecessors are older than the cutoff (audit only)."""

    @property
    def cutoff_day(self) -> dt.date:
        return self.cutoff.date()


@dataclass(frozen=True)
class Dependant:
    table: sa.Table
    column: str
    """The dependant's column holding the root row's id."""


@dataclass(frozen=True)
class Root:
    table: sa.Table
    where: Callable[[Context], sa.ColumnElement[bool]]
    order_by: str = "id"
    dependants: tuple[Dependant, ...] = ()

    @property
    def key(self) -> sa.Column[object]:
        return self.table.c[self.order_by]


def _orders(ctx: Context) -> sa.ColumnElement[bool]:
    o = orders.c
    unfinished_refund = sa.exists().where(
        refunds.c.order_id == o.id, sa.or_(refunds.c.state.not_in(FINAL_REFUND), refunds.c.due_at.is_not(None))
    )
    open_exception = sa.exists().where(
        recon_exceptions.c.hospital_id == o.hospital_id,
        recon_exceptions.c.out_trade_no == o.out_trade_no,
        recon_exceptions.c.status.not_in(CLOSED_EXCEPTION),
    )
    proposal = sa.exists().where(refund_proposals.c.order_id == o.id)
    return sa.and_(
        o.created_at < ctx.cutoff,
        o.status.in_(FINAL_ORDER),
        o.his_state != "pending",
        o.due_at.is_(None),
        sa.or_(o.leased_until.is_(None), o.leased_until < ctx.now),
        ~unfinished_refund,
        ~open_exception,
        ~proposal,
    )


def _open_keys() -> sa.Select[tuple[str]]:
    return sa.select(recon_exceptions.c.entry_key).where(
        recon_exceptions.c.hospital_id == recon_observations.c.hospital_id,
        recon_exceptions.c.status.not_in(CLOSED_EXCEPTION),
    )


KINDS: dict[str, tuple[Root, ...]] = {
    "orders": (Root(orders, _orders, dependants=(Dependant(refunds, "order_id"),)),),
    "callbacks": (
        Root(
            channel_events,
            lambda ctx: sa.and_(
                channel_events.c.received_at < ctx.cutoff,
                channel_events.c.processed_at.is_not(None),
                channel_events.c.due_at.is_(None),
            ),
        ),
    ),
    "notifications": (
        Root(
            notifications,
            lambda ctx: sa.and_(
                notifications.c.created_at < ctx.cutoff, notifications.c.state.in_(("delivered", "dead"))
            ),
        ),
    ),
    "audit": (
        Root(
            audit_log,
            lambda ctx: sa.and_(audit_log.c.chain_seq.is_not(None), audit_log.c.chain_seq <= (ctx.audit_head or 0)),
            order_by="chain_seq",
        ),
    ),
    "recon": (
        Root(recon_runs, lambda ctx: sa.and_(recon_runs.c.day < ctx.cutoff_day, recon_runs.c.status != "running")),
        Root(statements, lambda ctx: statements.c.day < ctx.cutoff_day),
        Root(his_details, lambda ctx: his_details.c.day < ctx.cutoff_day),
        Root(
            recon_observations,
            lambda ctx: sa.and_(
                recon_observations.c.day < ctx.cutoff_day, recon_observations.c.entry_key.not_in(_open_keys())
            ),
        ),
        Root(
            job_leases,
            lambda ctx: sa.and_(job_leases.c.day < ctx.cutoff_day, job_leases.c.state.in_(("done", "failed"))),
        ),
        Root(
            recon_exceptions,
            lambda ctx: sa.and_(
                recon_exceptions.c.last_day < ctx.cutoff_day,
                recon_exceptions.c.status.in_(CLOSED_EXCEPTION),
                recon_exceptions.c.updated_at < ctx.cutoff,
            ),
            dependants=(Dependant(refund_proposals, "exception_id"),),
        ),
    ),
}
"""Each retention kind's roots, in the order they are archived (and removed; restored in the same order)."""

TABLES_OF_KIND = {kind: [t for root in roots for t in (root.table, *(d.table for d in root.dependants))]
                  for kind, roots in KINDS.items()}  # fmt: skip
TABLES = {t.name: t for tables in TABLES_OF_KIND.values() for t in tables}
