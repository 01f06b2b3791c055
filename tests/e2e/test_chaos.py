"""The short chaos run (`python -m tests.chaos --quick`): faults at both simulators, the gateway
killed with SIGKILL and restarted, Postgres stopped and restarted, and every money invariant
holding at the end. `make chaos` is the long version."""

from __future__ import annotations

import sys

import pytest

from tests.processes import run_harness


@pytest.mark.timeout(420)
def test_short_chaos_run_ends_with_every_invariant_holding():
    run = run_harness([sys.executable, "-m", "tests.chaos", "--quick"], timeout=330)
    report = run.stdout
    assert run.returncode == 0, f"{report}\n{run.stderr[-5000:]}"
    assert "chaos run passed: every invariant holds" in report
    for happened in ("gateway killed (SIGKILL): 1", "gateway killed with refund commands in flight: 1",
                     "Postgres stopped: 1", "Postgres restarted: 1", "[ ok ] the load happened"):
        assert happened in report, report
    assert "[FAIL]" not in report and report.count("[ ok ]") == 9, report
