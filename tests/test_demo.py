"""The README's main-job command stays true: ``scripts/demo.py`` runs the bridge steps and then a payment, a partial
and a full refund through gateway → sandbox channel → bridge → sandbox HIS, as real processes, the three ledgers
agreeing; then a kiosk pays and a window refunds through the agent's intranet listener, and the day reconciles —
by WeChat Pay (the default) and by UnionPay (``--channel unionpay``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("channel", ["wechat", "unionpay"])
def test_the_demo_runs_the_main_job_end_to_end(tmp_path: Path, channel: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--work", str(tmp_path / "demo"), "--channel", channel],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its own processes on SIGTERM
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"the demo did not finish in 90 s:\n{out}")
    assert proc.returncode == 0, out
    for line in (
        "HIS charge.commit receipt",
        "payment done:",
        "partial refund done:",
        "full refund done:",
        "order.completed",
        "the three ledgers agree:",
        "OK   codepay  paid",
        "OK   refund   succeeded",
        "run v1 done: records his 8, platform 5, channel 5; matched 5, over_collection 1, under_collection 2",
        "keys: 0 FAIL, 0 WARN",
        "finance console: http://127.0.0.1:",
        "Stopped every process the demo started.",
    ):
        assert line in out, f"{line!r} missing from the demo's output:\n{out}"
    assert "refunds 260.00 + 43.80" in out
    assert f"{channel} trade state REFUND" in out
