"""A sandbox HIS file from before refund cancellation is refused with a message, not half-used."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from sandbox.his.state import HisState, OutdatedDatabase

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def old_file(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE refunds (id INTEGER PRIMARY KEY, refund_no TEXT, written_back_at TEXT)")
    return path


def test_the_state_refuses_an_outdated_file(tmp_path: Path) -> None:
    with pytest.raises(OutdatedDatabase, match="older sandbox HIS"):
        HisState(old_file(tmp_path / "old.sqlite3"))
    fresh = HisState(tmp_path / "new.sqlite3")
    try:
        assert fresh.seed()
    finally:
        fresh.close()
    HisState(tmp_path / "new.sqlite3").close()  # its own file opens again


def test_the_cli_says_what_to_do(tmp_path: Path) -> None:
    path = old_file(tmp_path / "old.sqlite3")
    command = [sys.executable, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0", "--db", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 2
    assert f"{path} was created by an older sandbox HIS" in result.stderr and "start without --db" in result.stderr
    assert "Traceback" not in result.stderr
