"""The invariants a hospital's day must keep, checked on the three ledgers as read back after the day (``books``):

- **no loss**: every payment a channel took is booked at the HIS, refunded, or shown to finance; every HIS booking
  has a channel payment or is shown; every refund the channel paid on a booked payment reached the HIS; every
  refund the HIS applied was paid back to the payer or is shown;
- **no double effect**: no payment booked twice at the HIS, no order refunded beyond what was paid;
- **money balances**: per order, paid = refunded + kept on each ledger, and what is kept agrees across the three,
  unless the order is shown to finance; so the three totals agree after the listed exceptions;
- **finance closes the day**: after finance's work and the rerun, no exception is left open, and every order
  whose ledgers still disagree has an exception finance settled (a HIS corrected by hand leaves the sandbox HIS
  as it was: the note says what was done);
- **every fault accounted for**: each targeted fault's order shows exactly the classes ``faults.EXPECTED`` names,
  a window fault's orders show nothing it does not explain, and no exception appears that no fault explains.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sandbox.day.books import Books, OrderBooks
from sandbox.day.faults import EXPECTED
from sandbox.day.plan import Plan, PlannedFault

OPEN_STATUSES = frozenset({"open", "proposed", "approved"})
SETTLED_STATUSES = frozenset({"handled", "closed"})


@dataclass(frozen=True)
class Finding:
    subject: str
    """The business order number (the ``out_trade_no`` when the platform has no order)."""
    detail: str


@dataclass
class FaultOutcome:
    fault: PlannedFault
    subjects: list[str]
    found: set[str]
    """Exception classes on the fault's order(s) that no other fault explains."""
    accounted: bool


@dataclass
class Verdict:
    lost: list[Finding] = field(default_factory=list)
    double: list[Finding] = field(default_factory=list)
    unbalanced: list[Finding] = field(default_factory=list)
    left_open: list[Finding] = field(default_factory=list)
    false_exceptions: list[Finding] = field(default_factory=list)
    faults: list[FaultOutcome] = field(default_factory=list)
    exceptions: Counter[str] = field(default_factory=Counter)
    """Exceptions by class (one per order and class)."""
    totals: dict[str, int] = field(default_factory=dict)
    settled_offline: list[str] = field(default_factory=list)
    flow_errors: list[str] = field(default_factory=list)

    @property
    def faults_unaccounted(self) -> int:
        return sum(not f.accounted for f in self.faults)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.double
            or self.unbalanced
            or self.left_open
            or self.false_exceptions
            or self.faults_unaccounted
            or self.flow_errors
        )


def _name(ob: OrderBooks) -> str:
    return str((ob.order or {}).get("business_order_no") or ob.out_trade_no)


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _money(books: Books, v: Verdict) -> None:
    for ob in books.orders.values():
        name, listed = _name(ob), bool(ob.exceptions)
        paid, refunded = ob.channel_paid, ob.channel_refunded
        if paid and not ob.his_trades and refunded < paid and not listed:
            v.lost.append(
                Finding(
                    name,
                    f"the channel took {_yuan(paid)}, the HIS booked nothing, {_yuan(refunded)} "
                    "went back, and finance is shown nothing",
                )
            )
        if ob.his_trades and not paid and not listed:
            v.lost.append(Finding(name, f"the HIS booked {_yuan(ob.his_paid)} that no channel took"))
        his_refunds = {r["refund_no"]: r for r in ob.his_refunds}
        paid_back = {r["out_refund_no"] for r in ob.channel_refunds if r["state"] == "SUCCESS"}
        for refund in ob.channel_refunds:
            booked = his_refunds.get(refund["out_refund_no"])
            reached = booked is not None and booked.get("written_back_at")
            if ob.his_trades and refund["state"] == "SUCCESS" and not reached and not listed:
                v.lost.append(
                    Finding(
                        name,
                        f"refund {refund['out_refund_no']} of {_yuan(refund['amount_fen'])} "
                        "was paid by the channel but never reached the HIS",
                    )
                )
        for refund_no, refund in his_refunds.items():
            if refund_no not in paid_back and not listed:
                state = "written back" if refund.get("written_back_at") else "applied"
                v.lost.append(
                    Finding(
                        name,
                        f"the HIS {state} refund {refund_no} of {_yuan(refund['amount_fen'])} "
                        "that the channel never paid",
                    )
                )
        if len(ob.his_trades) > 1:
            v.double.append(Finding(name, f"the HIS booked the payment {len(ob.his_trades)} times"))
        if refunded > paid:
            v.double.append(Finding(name, f"{_yuan(refunded)} refunded of {_yuan(paid)} paid"))
        his_agreed = sum(int(r["amount_fen"]) for r in ob.his_refunds)
        if ob.his_trades and refunded > his_agreed:
            v.double.append(
                Finding(
                    name,
                    f"the channel paid back {_yuan(refunded)} where the HIS refunded {_yuan(his_agreed)}: a refund "
                    "paid twice, or money returned that the HIS keeps",
                )
            )
        kept = ob.kept()
        if len(set(kept)) > 1:
            settled = ob.console and all(c.status in SETTLED_STATUSES for c in ob.console)
            if not listed:
                v.unbalanced.append(Finding(name, "kept: channel {}, HIS {}, platform {}".format(*map(_yuan, kept))))
            elif settled:
                v.settled_offline.append(name)
            else:
                v.left_open.append(
                    Finding(
                        name,
                        "ledgers disagree (kept: channel {}, HIS {}, platform {}) and no "
                        "exception of it was settled".format(*map(_yuan, kept)),
                    )
                )
    for refund in books.unknown_channel_refunds:
        v.lost.append(
            Finding(
                refund["out_trade_no"],
                f"the channel paid refund {refund['out_refund_no']} of a trade the platform does not know",
            )
        )
    names = ("channel", "his", "platform")
    for i, side in enumerate(names):
        v.totals[side] = sum(ob.kept()[i] for ob in books.orders.values())
        v.totals[f"{side}_unlisted"] = sum(ob.kept()[i] for ob in books.orders.values() if not ob.exceptions)


def _faults(plan: Plan, books: Books, v: Verdict, fired: set[int]) -> None:
    by_no = {str(ob.order["business_order_no"]): ob for ob in books.orders.values() if ob.order}
    explained: dict[str, set[str]] = {}
    for fault in plan.faults:
        if fault.target is not None:
            explained.setdefault(plan.orders[fault.target].no, set()).update(EXPECTED[fault.kind].classes)
    for fault in plan.faults:
        if fault.target is not None:
            subjects = [plan.orders[fault.target].no]
        else:
            until = fault.until or fault.at
            subjects = [o.no for o in plan.orders if fault.at <= o.pay_at <= until and o.paid]
        found: set[str] = set()
        for no in subjects:
            ob = by_no.get(no)
            shown = ob.exceptions if ob is not None else set()
            found |= shown if fault.target is not None else shown - explained.get(no, set())
        if fault.target is not None and by_no.get(subjects[0]) is None:
            found.add("no order at the gateway")
        if fault.id not in fired:
            found.add("not injected")
        accounted = found == set(EXPECTED[fault.kind].classes)
        v.faults.append(FaultOutcome(fault, subjects, found, accounted))
    for ob in books.orders.values():
        name = _name(ob)
        for cls in sorted(ob.exceptions):
            v.exceptions[cls] += 1
            if cls not in explained.get(name, set()):
                v.false_exceptions.append(Finding(name, cls))


def _finance(books: Books, v: Verdict) -> None:
    for row in books.console:
        if row.status in OPEN_STATUSES:
            subject = row.out_trade_no or row.out_refund_no
            v.left_open.append(Finding(subject, f"{row.cls} of {row.day} is still {row.status}"))


def check(plan: Plan, books: Books, flow_errors: list[str], fired: set[int]) -> Verdict:
    """``fired``: the ids of the faults that happened; one that did not is unaccounted, whatever else is seen."""
    v = Verdict(flow_errors=list(flow_errors))
    _money(books, v)
    _faults(plan, books, v, fired)
    _finance(books, v)
    return v
