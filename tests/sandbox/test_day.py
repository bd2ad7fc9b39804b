"""A short hospital day with every fault kind, run as an operator runs it: ``his-sandbox day`` starting the sandbox
HIS, the sandbox channels, the bridge agent and the gateway as processes on one simulated clock, then
reconciling, working the exceptions at the console and checking the three ledgers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.day.faults import FaultKind

pytestmark = [pytest.mark.system, pytest.mark.timeout(960)]
BIN = Path(sys.executable).parent


DAY_TIMEOUT_S = 900


def day(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str, subprocess.CompletedProcess[str]]:
    """Run a day as an operator does. In its own process group: if the test is cut short, the day is stopped
    with SIGTERM (it stops its stack on the way out), then the whole group is killed, so no HIS, channel, agent
    or gateway process outlives the test."""
    argv = [str(BIN / "his-sandbox"), "day", "--work", str(tmp_path / "day"), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DAY_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return json.loads(out.strip().splitlines()[-1]), out + err[-3000:], done


def test_a_short_day_with_every_fault_loses_nothing_and_flags_only_what_the_faults_explain(tmp_path: Path) -> None:
    kinds = ",".join(k.value for k in FaultKind)
    summary, report, done = day(tmp_path, "--orders", "160", "--seed", "11", "--faults", kinds)
    assert summary["faults_unaccounted"] == 0, report
    assert summary["false_exceptions"] == 0, report
    assert summary["lost"] == 0, report
    assert summary["double_effects"] == 0, report
    assert summary["invariants_ok"] is True, report
    assert done.returncode == 0
    assert summary["orders"] == 160 and summary["faults_injected"] >= len(FaultKind)
    for kind in FaultKind:
        assert f" {kind.value} " in report, f"{kind.value} was not injected"
    # the faults that must leave exceptions did, and finance worked them at the console
    assert "refund approved      1" in report and "marked handled" in report
    assert "over_collection" in report and "status_mismatch" in report and "refund_abnormal" in report
    assert not (tmp_path / "day").exists(), "a day that passes leaves no work folder behind"


def test_a_refund_written_back_after_midnight_is_one_entry_that_crosses_midnight(tmp_path: Path) -> None:
    summary, report, _ = day(tmp_path, "--orders", "40", "--seed", "3", "--faults", "midnight_refund,midnight_payment")
    assert summary["faults_injected"] == 2, report
    assert summary["false_exceptions"] == 0 and summary["double_effects"] == 0, report
    assert summary["invariants_ok"] is True, report
