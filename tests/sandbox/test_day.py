"""A short hospital day with every fault kind, run as an operator runs it: ``his-sandbox day`` starting the sandbox
HIS, the sandbox channels, the bridge agent and the gateway as processes on one simulated clock, then
reconciling, working the exceptions at the console and checking the three ledgers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sandbox.day.faults import FaultKind

BIN = Path(sys.executable).parent


def test_a_short_day_with_every_fault_loses_nothing_and_flags_only_what_the_faults_explain(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "his-sandbox"), "day", "--orders", "160", "--seed", "11", "--work", str(tmp_path / "day")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = done.stdout
    summary = json.loads(report.strip().splitlines()[-1])
    assert summary["faults_unaccounted"] == 0, report + done.stderr[-3000:]
    assert summary["false_exceptions"] == 0, report + done.stderr[-3000:]
    assert summary["lost"] == 0, report + done.stderr[-3000:]
    assert summary["double_effects"] == 0, report + done.stderr[-3000:]
    assert summary["invariants_ok"] is True, report + done.stderr[-3000:]
    assert done.returncode == 0
    assert summary["orders"] == 160 and summary["faults_injected"] >= len(FaultKind)
    for kind in FaultKind:
        assert f" {kind.value} " in report, f"{kind.value} was not injected"
    # the faults that must leave exceptions did, and finance worked them at the console
    assert "refund approved      1" in report and "marked handled" in report
    assert "over_collection" in report and "under_collection" in report and "refund_abnormal" in report
    assert not (tmp_path / "day").exists(), "a day that passes leaves no work folder behind"
