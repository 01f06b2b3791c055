"""README.md's "A refund, step by step", run as written against a real `psp-gateway serve` started
with deploy/dev.toml, so that the walkthrough cannot drift from what the gateway answers; and the
simulator sessions of docs/processors/, run against the simulators as `make stripe-sim` and
`make bridgepay-sim` start them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import answers_ok, free_port

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## A refund, step by step"
needs_shell = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                 reason="needs curl and bash")


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


def shell_env() -> dict[str, str]:
    """`python3` in a block: this interpreter's, first on the PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def documented_transitions(prose: str) -> dict[str, float]:
    """The metric lines the README shows after the session, as `# name{labels} value` comments."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^# (psp_gateway_refund_transitions_total\{[^}]*\}) ([\d.]+)$", prose, re.M)}


def scraped(url: str, prefix: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix + "{")}


@needs_shell
def test_readme_walkthrough_answers_what_it_says(gateways, database_url, tmp_path):
    script, prose = walkthrough()
    assert "GW=http://127.0.0.1:8080" in script and "/tmp/refund.json" in script, "the block changed shape"
    gateway = gateways((ROOT / "deploy/dev.toml").read_text(), GATEWAY_DATABASE_URL=database_url)
    gateway.wait_ready()
    script = (mark_steps(script).replace("GW=http://127.0.0.1:8080", f"GW={gateway.url}")
              .replace("/tmp/refund.json", str(tmp_path / "refund.json")))
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=shell_env(),
                         cwd=tmp_path)
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
    # The metrics the README shows after the session are the gateway's, line for line.
    shown = documented_transitions(prose)
    assert shown, "the README no longer shows the transitions after the session"
    assert scraped(gateway.url, "psp_gateway_refund_transitions_total") == shown


# --- the simulator sessions in docs/processors/ -------------------------------------------------

def doc_session(path: Path) -> str:
    """The doc's shell session against its simulator: the ```sh block that starts the simulator, without
    the two `make` lines (the test starts both processes itself)."""
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
    [block] = [b for b in blocks if re.search(r"^make \S+-sim", b, re.M)]
    return "\n".join(line for line in block.splitlines() if not re.match(r"^(GATEWAY_CONFIG=\S+ )?make ", line))


def make_recipe(target: str, **replace: str) -> list[str]:
    """The command a Makefile target runs, for this interpreter, with `replace` applied to its text."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", makefile, re.M).group(1)
    recipe = recipe.replace("$(BIN)/python", sys.executable)
    for old, new in replace.items():
        assert old in recipe, f"make {target} no longer has {old!r}"
        recipe = recipe.replace(old, new)
    return shlex.split(recipe)


class Simulator:
    def __init__(self, argv: list[str], url: str, log: Path):
        self.url, self._log = url, open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the simulator exited with {self.proc.returncode}"
            if answers_ok(f"{self.url}/_sim/state"):
                return
            time.sleep(0.1)
        raise AssertionError("the simulator did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_session(script: str, cwd: Path) -> list[dict]:
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=shell_env(), cwd=cwd)
    assert run.returncode == 0, run.stderr
    decoder, answers, text, at = json.JSONDecoder(), [], run.stdout, 0
    while True:
        at = len(text) - len(text[at:].lstrip())
        if at >= len(text):
            return answers
        answer, at = decoder.raw_decode(text, at)
        answers.append(answer)


@needs_shell
def test_the_stripe_simulator_session_waits_for_the_webhook_and_refunds(gateways, database_url, tmp_path):
    port = free_port()
    config = (ROOT / "deploy/stripe-sim.toml").read_text()
    assert 'base_url = "http://127.0.0.1:12111"' in config
    gateway = gateways(config.replace("127.0.0.1:12111", f"127.0.0.1:{port}"), GATEWAY_DATABASE_URL=database_url)
    sim = Simulator(make_recipe("stripe-sim", **{"--port 12111": f"--port {port}",
                                                 "$${GATEWAY_PORT:-8080}": str(gateway.port)}),
                    f"http://127.0.0.1:{port}", tmp_path / "stripe-sim.log")
    try:
        sim.wait_ready()
        gateway.wait_ready()
        script = (doc_session(ROOT / "docs/processors/stripe.md")
                  .replace("SIM=http://127.0.0.1:12111", f"SIM={sim.url}").replace("GW=http://127.0.0.1:8080",
                                                                                   f"GW={gateway.url}"))
        answers = run_session(script, tmp_path)
    finally:
        sim.stop()
    charge, payments, refund, state = answers
    assert charge["object"] == "charge" and charge["metadata"]["invoice_id"] == "INV-2001", charge
    assert [p["psp_reference"] for p in payments["data"]] == [charge["id"]], "the loop did not wait for the webhook"
    assert refund.get("object") == "refund" and refund["amount"] == 3000, refund
    assert refund["status"] in ("succeeded", "pending"), refund
    assert state, "the simulator's state"


@needs_shell
def test_the_bridgepay_simulator_session_refunds_a_settled_sale(gateways, database_url, tmp_path):
    port = free_port()
    config = (ROOT / "deploy/bridgepay-sim.toml").read_text()
    assert 'base_url = "http://127.0.0.1:12112"' in config
    gateway = gateways(config.replace("127.0.0.1:12112", f"127.0.0.1:{port}"), GATEWAY_DATABASE_URL=database_url)
    sim = Simulator(make_recipe("bridgepay-sim", **{"--port 12112": f"--port {port}"}),
                    f"http://127.0.0.1:{port}", tmp_path / "bridgepay-sim.log")
    try:
        sim.wait_ready()
        gateway.wait_ready()
        script = (doc_session(ROOT / "docs/processors/bridgepay.md")
                  .replace("SIM=http://127.0.0.1:12112", f"SIM={sim.url}").replace("GW=http://127.0.0.1:8080",
                                                                                   f"GW={gateway.url}"))
        payment, refund, state = run_session(script, tmp_path)
    finally:
        sim.stop()
    assert payment["object"] == "transaction" and payment["processor"] == "bridgepay", payment
    assert (refund["status"], refund["amount"], refund["currency"]) == ("succeeded", 1200, "USD"), refund
    assert state, "the simulator's state"
