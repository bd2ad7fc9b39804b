"""``scripts/sim_sms_attack.py`` runs end to end on a small scale and ends with its JSON line: the pump is
held to a few SMS per target segment and no patient is refused."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.rig import REPO


def test_the_attack_simulator_reports_on_its_last_line():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sim_sms_attack.py"), "--attack", "400", "--patients", "40",
         "--minutes", "20", "--seed", "3"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"attack_sms_sent", "attack_attempts", "legit_refused", "legit_captcha_rate"}
    assert report["attack_attempts"] == 400
    assert report["legit_refused"] == 0
    assert report["attack_sms_sent"] <= 3 * 10, "at most a segment's ten-minute allowance per target segment"
