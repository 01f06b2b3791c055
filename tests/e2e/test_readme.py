"""README.md's "A refund, step by step", run as written against a real `psp-gateway serve` started
with deploy/dev.toml, so that the walkthrough cannot drift from what the gateway answers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## A refund, step by step"


def walkthrough() -> tuple[str, str]:
    """The section's ```sh block and the prose after it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```\n(.*)", section, re.S)
    assert match, f"no ```sh block under {HEADING!r}"
    return match.group(1), match.group(2)


def mark_steps(script: str) -> str:
    """An echo before each numbered step's comment, so that each answer is known by its step."""
    return re.sub(r"^# (\d+)\.", r'echo "@@step \1"\n# \1.', script, flags=re.M)


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash")
def test_readme_walkthrough_answers_what_it_says(gateways, database_url, tmp_path):
    script, prose = walkthrough()
    assert "GW=http://127.0.0.1:8080" in script and "/tmp/refund.json" in script, "the block changed shape"
    gateway = gateways((ROOT / "deploy/dev.toml").read_text(), GATEWAY_DATABASE_URL=database_url)
    gateway.wait_ready()
    script = (mark_steps(script).replace("GW=http://127.0.0.1:8080", f"GW={gateway.url}")
              .replace("/tmp/refund.json", str(tmp_path / "refund.json")))
    # `python3` in the block: this interpreter's, first on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    steps: dict[int, list[dict]] = {}
    for part in run.stdout.split("@@step ")[1:]:
        number, *lines = part.strip().splitlines()
        steps[int(number)] = [json.loads(line) for line in lines if line.strip()]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6, 7], run.stdout

    [payment] = steps[1]
    assert payment["amount"] == 10_000 and payment["invoice_id"] == "INV-1001", payment
    [refund] = steps[2]
    assert refund["status"] == "succeeded" and refund["amount"] == 2_500, refund
    read_back, listed, transactions = steps[3]
    assert read_back["id"] == refund["id"] and [r["id"] for r in listed["data"]] == [refund["id"]]
    assert transactions["data"][0]["refunded_amount"] == 2_500
    [declined] = steps[4]
    said = re.search(r'"failure_code": "([a-z_]+)"', prose)
    assert said, "the prose no longer names step 4's failure code"
    assert declined["status"] == "failed" and declined["failure_code"] == said.group(1), declined
    assert f'"next_action": "{declined["next_action"]}"' in prose
    note, retried = steps[5]
    assert f'"status": "{note["status"]}"' in prose and note["status"] == "pending_refund", note
    assert retried["previous_refund_id"] == declined["id"] and retried["status"] == "failed", retried
    offline, settled = steps[6]
    assert (offline["status"], offline["external_reference"]) == ("refunded_offline", "SEPA-1001-2"), offline
    assert settled["status"] == "refunded_offline" and [r["id"] for r in settled["refunds"]] == [
        declined["id"], retried["id"], offline["id"]], settled
    [refused] = steps[7]
    assert refused["status"] == 422 and refused["code"] == "amount_exceeds_refundable", refused
    assert f'"code": "{refused["code"]}"' in prose and "HTTP 422" in prose
    assert refused["refundable_amount"] == 10_000 - 2_500 - 4_001
