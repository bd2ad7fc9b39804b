"""The benchmarks still run and still print the figures their issues ask for.

Nothing here judges speed (benchmarks print figures; tests check behaviour): each script runs on a small load
and its last line must be one JSON object carrying the agreed keys, so that a refactor cannot leave a
benchmark that no longer starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]

BENCHMARKS = {
    "bench_bridge.py": (
        ["--quick"],
        {
            "bridge_vs_passthrough_throughput_c64",
            "bridge_added_p99_ms_c16",
            "journal_group_vs_single_commit_ratio",
            "bridge_peak_rss_mb",
            "lost_writes",
        },
    ),
    "bench_adapters.py": (["--quick"], {"soap_overhead_ratio", "hl7_overhead_ratio", "dbproc_overhead_ratio"}),
    "bench_gateway.py": (
        ["--orders", "20", "--concurrency", "4", "--notifications", "20"],
        {"orders_per_s_sqlite", "orders_per_s_postgres", "notify_per_s_postgres"},
    ),
    "bench_his_recon.py": (
        ["--records", "1500", "--rounds", "1"],
        {"his_recon_fetch_records_per_s", "recon_validate_us_per_record", "recon_validate_vs_before_ratio"},
    ),
    "bench_egress.py": (
        ["--quick"],
        {"egress_vs_direct_throughput", "egress_added_p50_ms", "agent_peak_rss_mb", "lost", "doubled"},
    ),
    "bench_platform.py": (
        ["--hospitals", "4", "--records", "100", "--instances", "1,2,4", "--orders", "40", "--clients", "4"],
        {
            "recon_seconds_1",
            "recon_seconds_2",
            "recon_seconds_4",
            "recon_speedup_2",
            "duplicate_runs",
            "orders_per_s_1",
            "orders_per_s_2",
            "orders_per_s_4",
        },
    ),
    "bench_recon.py": (
        ["--rows", "20000"],
        {
            "recon_1m_seconds",
            "recon_vs_pandas_ratio",
            "recon_peak_rss_mb",
            "wechat_parse_rows_per_s",
            "alipay_parse_rows_per_s",
            "parse_peak_rss_mb",
            "recon_e2e_1m_seconds",
        },
    ),
}


@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_benchmark_prints_its_figures(script: str) -> None:
    args, keys = BENCHMARKS[script]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert keys <= set(figures), f"missing: {sorted(keys - set(figures))}"
    if "duplicate_runs" in figures:
        assert figures["duplicate_runs"] == 0, figures
    if "lost_writes" in figures:
        assert figures["lost_writes"] == 0
    if "doubled" in figures:
        assert figures["lost"] == figures["doubled"] == figures["unanswered"] == 0, figures
