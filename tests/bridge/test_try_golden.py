"""`his-bridge try` as a vendor engineer runs it, compared with golden files under tests/golden/try/.

The output of a dry run is part of what a HIS vendor engineer reviews before going live, so any change to it
(a template, a filter, the envelope zeep builds, the CLI's layout) must show up as a diff. Set
``UPDATE_GOLDEN=1`` to rewrite the files after an intended change, then review them with ``git diff``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import catalog
from sandbox.cli import start_sandbox_his
from sandbox.his.state import SHANGHAI

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "try"
INPUTS = REPO / "tests" / "fixtures" / "try"
SOAP_PROFILES = ("sandbox-soap", "soap-asmx-xml")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
NOW = dt.datetime(2025, 11, 14, 9, 30, tzinfo=SHANGHAI)


def his_bridge_try(base_url: str, profile: str, operation: str, *more: str) -> subprocess.CompletedProcess[str]:
    """Run from the repository root with relative paths, as the README shows; the profile finds the sandbox
    through ``HIS_SANDBOX_URL``."""
    command = [
        sys.executable,
        "-m",
        "bridge.cli",
        "try",
        operation,
        "--profile",
        f"config/profiles/{profile}.toml",
        "--input",
        f"tests/fixtures/try/{operation}.json",
        *more,
    ]
    env = {**os.environ, "HIS_SANDBOX_URL": base_url}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)


def normalized(output: str, base_url: str) -> str:
    port = base_url.rsplit(":", 1)[1]
    return output.replace(f"127.0.0.1:{port}", "127.0.0.1:<port>")


def assert_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path.relative_to(REPO)}; create it with UPDATE_GOLDEN=1 and review it")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), "golden", "actual"
        )
        pytest.fail(f"{path.relative_to(REPO)} differs (UPDATE_GOLDEN=1 rewrites it):\n{''.join(diff)}")


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    """A sandbox HIS process serving the WSDL that the dry runs load; nothing is sent to it."""
    command = [sys.executable, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("sandbox HIS listening on "), line
            yield line.rsplit(" ", 1)[1].removesuffix("/his/HisService.asmx")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.parametrize("operation", list(catalog.OPERATIONS))
@pytest.mark.parametrize("profile", SOAP_PROFILES)
def test_dry_run_matches_the_golden_file(sandbox_url: str, profile: str, operation: str) -> None:
    result = his_bridge_try(sandbox_url, profile, operation)
    assert result.returncode == 0, result.stderr
    assert_golden(GOLDEN / profile / f"{operation}.txt", normalized(result.stdout, sandbox_url))


async def test_send_prints_the_reply_and_the_mapped_result(tmp_path: Path) -> None:
    """A read and a write sent to a sandbox with a fixed clock (receipt numbers carry the HIS's date), then the
    same write again, which this HIS refuses: the reply is shown with the refusal and the exit code is 1."""
    his = await start_sandbox_his(db_path=tmp_path / "his.sqlite3", clock=lambda: NOW)
    try:
        for operation in ("patient.query", "charge.commit"):
            result = await asyncio.to_thread(his_bridge_try, his.base_url, "soap-asmx-xml", operation, "--send")
            assert result.returncode == 0, result.stderr
            golden = GOLDEN / "soap-asmx-xml" / f"{operation}.send.txt"
            assert_golden(golden, normalized(result.stdout, his.base_url))
        assert his.state.receipts_for("T20251114000001") == ["SF20251114000001"]

        again = await asyncio.to_thread(his_bridge_try, his.base_url, "soap-asmx-xml", "charge.commit", "--send")
        assert again.returncode == 1
        tail = again.stdout.split("# on the wire\n", 1)[1]
        assert "# failed (permanent) 2002: 缴费单已缴费 (bill B0001 already paid)\n# reply\n" in tail
        assert "<ResultCode>2002</ResultCode>" in tail and "# mapped result" not in tail
        assert his.state.receipts_for("T20251114000001") == ["SF20251114000001"]
    finally:
        await his.close()


def test_set_overrides_a_profile_value(sandbox_url: str) -> None:
    """``--set`` points a profile elsewhere without editing it (here: a port nothing listens on)."""
    result = his_bridge_try(
        sandbox_url, "sandbox-soap", "patient.query", "--set", "soap.base_url=http://127.0.0.1:9", "--send"
    )
    assert result.returncode == 1
    assert "cannot load the WSDL http://127.0.0.1:9/his/HisService.asmx?wsdl" in result.stderr
