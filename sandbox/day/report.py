"""The day's report: what was planned, the faults by kind, the exceptions by class, the invariant checks, every
fault with the exception it produced or why none was due, and last one JSON line. Nothing in it depends on the
machine or the wall clock (timings go to the progress output), so the same seed prints the same report."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sandbox.day.checks import Finding, Verdict
from sandbox.day.faults import EXPECTED
from sandbox.day.plan import Plan

SHOWN = 12
"""At most this many findings of one check are listed (all are counted)."""


@dataclass
class Activity:
    """What happened, beyond the plan: reconciliation runs and finance's actions."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    finance: Counter[str] = field(default_factory=Counter)
    finance_refused: list[str] = field(default_factory=list)
    gateways: int = 1
    database: str = "sqlite"


def summary_line(plan: Plan, v: Verdict) -> dict[str, Any]:
    return {
        "orders": len(plan.orders),
        "faults_injected": len(plan.faults),
        "faults_unaccounted": v.faults_unaccounted,
        "false_exceptions": len(v.false_exceptions),
        "lost": len(v.lost),
        "double_effects": len(v.double),
        "invariants_ok": v.ok,
    }


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _findings(title: str, findings: Iterable[Finding]) -> list[str]:
    items = list(findings)
    lines = [f"  {title:<26} {'ok' if not items else 'FAILED'} ({len(items)})"]
    lines += [f"      {f.subject}: {f.detail}" for f in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"      … and {len(items) - SHOWN} more")
    return lines


def render(plan: Plan, v: Verdict, activity: Activity) -> str:
    kinds = Counter(o.kind.value for o in plan.orders)
    refunds = sum(len(o.refunds) for o in plan.orders)
    out = [
        f"A hospital's day: seed {plan.seed}, {plan.day.isoformat()}, {len(plan.orders)} orders "
        f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), {refunds} refunds planned",
        f"  mix {plan.mix.text()}; gateway: {activity.gateways} instance(s) on {activity.database}",
        "",
        f"Faults injected ({len(plan.faults)})",
    ]
    by_kind = Counter(f.kind.value for f in plan.faults)
    out += [f"  {kind:<20} {n}" for kind, n in sorted(by_kind.items())]
    out += ["", f"Exceptions found ({sum(v.exceptions.values())}, one per order and class)"]
    out += [f"  {cls:<20} {n}" for cls, n in sorted(v.exceptions.items())] or ["  none"]
    out += ["", "Reconciliation runs"]
    for run in activity.runs:
        counts = run.get("counts", {})
        flagged = {k: n for k, n in sorted(counts.items()) if n and not k.endswith("_count") and k != "matched"}
        out.append(
            f"  {run['day']} v{run['version']} {run['status']}: matched {counts.get('matched', 0)}"
            + "".join(f", {k} {n}" for k, n in flagged.items())
        )
    out += ["", "Finance at the console"]
    out += [f"  {action:<20} {n}" for action, n in sorted(activity.finance.items())] or ["  nothing to do"]
    out += [f"  refused: {line}" for line in activity.finance_refused]
    t = v.totals
    out += ["", "Invariant checks"]
    out += _findings("no loss", v.lost)
    out += _findings("no double effect", v.double)
    out += _findings("money balances", v.unbalanced)
    out.append(
        f"      kept: channel {_yuan(t.get('channel', 0))}, HIS {_yuan(t.get('his', 0))}, "
        f"platform {_yuan(t.get('platform', 0))}; outside the listed exceptions: channel "
        f"{_yuan(t.get('channel_unlisted', 0))}, HIS {_yuan(t.get('his_unlisted', 0))}, "
        f"platform {_yuan(t.get('platform_unlisted', 0))}"
    )
    out += _findings("finance closes the day", v.left_open)
    if v.settled_offline:
        out.append(f"      settled offline by finance (HIS corrected by hand): {', '.join(v.settled_offline)}")
    out += _findings("false exceptions", v.false_exceptions)
    unaccounted = [Finding(f"#{f.fault.id}", f.fault.kind.value) for f in v.faults if not f.accounted]
    out += _findings("faults accounted for", unaccounted)
    out += _findings("the day ran as planned", (Finding("flow", e) for e in v.flow_errors))
    out += ["", "What each kind of fault must leave on the order it hits"]
    for kind in sorted({f.kind for f in plan.faults}):
        expected = EXPECTED[kind]
        what = f"{', '.join(sorted(expected.classes))}: " if expected.classes else ""
        out.append(f"  {kind.value:<18} {what}{expected.why}")
    out += ["", "Every fault, and what it left"]
    for outcome in v.faults:
        f = outcome.fault
        expected = EXPECTED[f.kind]
        left = ", ".join(sorted(outcome.found)) or "none"
        mark = "ok" if outcome.accounted else f"UNACCOUNTED, expected {', '.join(sorted(expected.classes)) or 'none'}"
        window = f", {len(outcome.subjects)} payments in its window" if f.target is None else ""
        out.append(f"  {f.describe(plan.orders)} → {left}{window}  [{mark}]")
    out += ["", json.dumps(summary_line(plan, v), separators=(",", ":"))]
    return "\n".join(out)
