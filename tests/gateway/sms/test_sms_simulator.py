"""``scripts/sim_sms_attack.py`` on the running gateway (the sandbox HIS behind a real agent): every strategy of
issue 17 at once, mixed with patients. Under 1 % of the attack attempts get an SMS and fewer than 2 % of the
patients are asked for a captcha (the hospital Wi-Fi configured as such). No patient that anything vouches for
(on file at the HIS, named by the app, on the hospital Wi-Fi) is refused; a new patient with none of these,
asking for a login code while that scope refuses, can be — the known gap docs/GATEWAY.md describes, bounded
here. The report has its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.rig import REPO

pytestmark = pytest.mark.system

STRATEGIES = {"sequential", "low_slow", "botnet", "no_client", "ua_only"}


@pytest.mark.timeout(1800)
def test_the_distributed_attack_is_held_and_patients_pass():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sim_sms_attack.py"), "--attack", "3300", "--patients", "300",
         "--minutes", "120", "--seed", "11"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {
        "attack_sms_sent", "attack_attempts", "legit_refused", "legit_captcha_rate", "legit_unvouched",
        "legit_unvouched_refused", "by_strategy", "attacker_cost_per_sms",
    }  # fmt: skip
    assert set(report["by_strategy"]) == STRATEGIES
    assert all(s["attempts"] > 0 for s in report["by_strategy"].values())
    assert report["attack_attempts"] >= 3300
    assert report["legit_refused"] == report["legit_unvouched_refused"], "no vouched patient is ever refused"
    assert report["legit_unvouched_refused"] <= max(1, report["legit_unvouched"] // 2), result.stdout[-3000:]
    assert report["legit_captcha_rate"] < 0.02
    assert report["attack_sms_sent"] < 0.01 * report["attack_attempts"], result.stdout[-3000:]
