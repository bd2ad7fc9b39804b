"""`his-bridge check --profile` on every shipped profile, and what it reports for a profile that falls short.

Shipped profiles must bind the whole catalog; the check is static (no config, no keys, no HIS running), so a
vendor engineer can run it on a laptop. A profile added to config/profiles/ is covered without editing this.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.rig import QUYI_WSDL

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "config" / "profiles").glob("*.toml"))
QUYI_SUBSET = REPO / "tests" / "fixtures" / "profiles" / "quyi-subset.toml"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bridge.cli", "check", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_the_shipped_profiles_are_found() -> None:
    assert {"sandbox-soap.toml", "soap-asmx-xml.toml"} <= {p.name for p in PROFILES}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_shipped_profile_passes_check(profile: Path) -> None:
    result = check("--profile", str(profile.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("profile OK")
    assert "operations bound" in result.stdout and "FAIL" not in result.stdout


def test_a_subset_profile_fails_and_a_local_wsdl_is_checked() -> None:
    """The quyi test profile binds what that interface can carry; with its WSDL as a file, calls and parameter
    names are checked against it too, still without any HIS running."""
    wsdl = f"soap.wsdl=file://{QUYI_WSDL}"
    result = check("--profile", str(QUYI_SUBSET), "--set", wsdl)
    assert result.returncode == 1
    assert (
        "does not bind: prepay.commit, refund.apply, refund.cancel, refund.writeback, registration.lock,"
        " registration.unlock" in result.stdout
    )
    assert f"OK    WSDL {QUYI_WSDL}: every call and parameter exists" in result.stdout

    typo = check(
        "--profile",
        str(QUYI_SUBSET),
        "--set",
        wsdl,
        "--set",
        'operations."charge.commit".call=SaveFees',
        "--set",
        'operations."trade.check".request={ recipe = "{{ trade_no }}" }',
    )
    assert typo.returncode == 1
    assert "the WSDL has no operation 'SaveFees'" in typo.stdout
    assert "GetRecieptStatus has no parameter 'recipe' (it takes recipeNo)" in typo.stdout


def test_check_needs_a_config_or_a_profile() -> None:
    assert check().returncode == 2
    bad = check("--profile", str(QUYI_SUBSET), "--set", "no-equals-sign")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
