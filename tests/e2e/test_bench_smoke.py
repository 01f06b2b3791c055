"""`make bench` in miniature: the harness starts, runs every scenario, stops what it started,
and its correctness checks hold. Figures are not asserted (benchmarks print them)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.processes import run_harness


@pytest.mark.timeout(300)
def test_quick_bench_runs_every_scenario_and_never_over_refunds(tmp_path):
    out = tmp_path / "bench.json"
    done = run_harness([sys.executable, "-m", "tests.bench", "--quick", "--out", str(out)], timeout=210)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["scenario"].split(".")[0] for r in report["scenarios"]]
    assert names == ["1", "1b", "2", "3", "4", "5", "1w", "1bw", "2w"]
    hot = report["scenarios"][3]
    assert hot["over_refunded"] == 0 and hot["unexpected_statuses"] == {}
    assert all(r["rps"] > 0 for r in report["scenarios"])
    assert report["machine"]["postgres"] and "req/s" in done.stdout
    assert hot["refunds_made"] == hot["balance_for"]  # the balance ran out, to the unit and no further
    webhooks = report["scenarios"][4]
    assert 0 < webhooks["applied_per_s"] <= webhooks["rps"]  # end to end, counted after the backlog drained
    assert not any(r.get("plan_wrapped") for r in report["scenarios"])
    # 1b and 1bw: the database watched, and the reference run at the same rate
    for open_loop in (report["scenarios"][1], report["scenarios"][7]):
        compared = open_loop["reference_open_loop"]
        assert open_loop["wal_bytes_per_request"] > 0 and compared["wal_bytes_per_request"] > 0
        assert 0 <= open_loop["wal_flush_wait_share"] <= 1 and compared["p99_ms"] > 0
