"""``his-bridge doctor`` checks the way out for the hospital's terminals (issue 12's gap): the keys, the gateway
over mutual TLS, and what waits in the outbound journal."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

import pytest

from bridge import doctor
from tests.support.egress_rig import egress_rig

pytestmark = pytest.mark.system


def egress_findings(report: doctor.Report) -> list[doctor.Finding]:
    return [f for f in report.findings if "egress" in f.what or "outbound" in f.what or "terminals" in f.what]


async def test_doctor_sees_the_gateway_answer_then_fail(tmp_path, dev_certs, channel_keys, his):
    async with egress_rig(tmp_path, dev_certs, channel_keys, his) as rig:
        config = rig.work / "agent.toml"
        report = await asyncio.to_thread(doctor.run, config)
        found = egress_findings(report)
        assert any("answers over mutual TLS" in f.what and f.level is doctor.Level.OK for f in found), found
        assert any("intranet 127.0.0.1" in f.what and "5 terminals" in f.what for f in found), found
        assert all(f.level is doctor.Level.OK for f in found), [f.text() for f in found]

        await rig.gateway.stop()
        report = await asyncio.to_thread(doctor.run, config)
        failed = [f for f in egress_findings(report) if f.level is doctor.Level.FAIL]
        assert len(failed) == 1 and "cannot reach the gateway" in failed[0].what, [f.text() for f in failed]
        assert "firewall" in failed[0].fix
        assert report.worst is doctor.Level.FAIL

        # A window refund queued for two hours while the platform was away.
        with contextlib.closing(sqlite3.connect(rig.work / "egress.sqlite3")) as conn, conn:
            conn.execute(
                "INSERT INTO requests (terminal_id, request_id, operation, kind, app, body_sha256, params, amount_fen,"
                " day, state, created_at, updated_at) VALUES ('WINDOW-1', 'R-QUEUED', 'refund', 'refund', 'agent',"
                " '0', '{}', 500, '2026-12-06', 'queued', ?, ?)",
                (time.time() - 7200, time.time() - 7200),
            )
        report = await asyncio.to_thread(doctor.run, config)
        queued = [f for f in report.findings if f.what.startswith("outbound journal: 1 queued")]
        assert len(queued) == 1 and queued[0].level is doctor.Level.WARN and "120 min" in queued[0].what, queued
