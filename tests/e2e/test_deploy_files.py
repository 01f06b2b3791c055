"""The deployment files against what they claim: `kubectl apply -k deploy/k8s/` applies an explicit set
with no Secret in it; the autoscaler alone sets the API's replicas; the worker's liveness probe asks a
/healthz its metrics port really serves; the ConfigMap is one environment; the README's session runs
against the compose configuration with exactly the port and key the compose files name; and, where a
container engine is present, the image builds and the compose stack answers that session.
(tests/unit/test_deploy_manifests.py checks that the files parse and validate.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.test_readme import mark_steps, needs_shell, shell_env, walkthrough
from tests.processes import GatewayProcess, free_port
from tests.unit.test_deploy_manifests import interpolate

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "examples" / "secret.example.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
BRIDGEPAY_TEST_HOST = "https://www.bridgepaynetsecuretest.com"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def applied() -> list[dict]:
    return [d for name in yaml.safe_load(KUSTOMIZATION.read_text())["resources"] for d in docs(K8S / name)]


def workload(name: str) -> dict:
    [found] = [d for d in applied() if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return found


def container(deployment: dict) -> dict:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


# --- Kubernetes --------------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest_of_the_folder_and_no_secret():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    folder = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert sorted(kustomization["resources"]) == sorted(folder), "every manifest in deploy/k8s/, and only those"
    assert "Secret" not in {d["kind"] for d in applied()}, "a second apply would overwrite the real Secret"
    assert not any("examples" in r for r in kustomization["resources"])
    [secret] = docs(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and "not in kustomization.yaml" in SECRET_EXAMPLE.read_text()


def test_no_deployment_sets_replicas_that_an_autoscaler_owns():
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in applied() if d["kind"] == "HorizontalPodAutoscaler"}
    assert scaled, "no autoscaler"
    for name in scaled:
        assert "replicas" not in workload(name)["spec"], f"{name}: every apply would reset the autoscaler's scale"


def test_the_worker_deployment_runs_the_worker_with_a_liveness_probe_on_its_metrics_port():
    worker = container(workload("psp-gateway-worker"))
    command = worker["command"]
    assert command[:2] == ["psp-gateway", "worker"] and "--metrics-port" in command
    port = int(command[command.index("--metrics-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    probe = worker["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == port
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["GATEWAY_HOST"] == "0.0.0.0", "the metrics listener binds GATEWAY_HOST: the kubelet must reach it"
    assert env["GATEWAY_CONFIG"] == {e["name"]: e.get("value") for e in container(workload("psp-gateway"))["env"]}[
        "GATEWAY_CONFIG"]


def test_the_worker_answers_healthz_on_its_metrics_port_without_the_metrics_token(tmp_path, database_url):
    port = free_port()
    config = (DEPLOY / "dev.toml").read_text()
    worker = GatewayProcess(tmp_path, config, "worker", extra_args=["--metrics-port", str(port)], port=port,
                            GATEWAY_DATABASE_URL=database_url, GATEWAY_METRICS_TOKEN="metrics-token-0123456789")
    try:
        worker.wait_working()
        with httpx.Client(base_url=worker.url, timeout=10) as client:
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}).status_code == 200
            assert client.get("/readyz").status_code == 404  # still no API
    finally:
        assert worker.stop() == 0


def test_the_config_map_is_one_environment_in_test_mode():
    [config_map] = [d for d in applied() if d["kind"] == "ConfigMap"]
    config = tomllib.loads(config_map["data"]["gateway.toml"])
    assert config_map["metadata"]["labels"]["psp-gateway/environment"] == "test"
    secret = docs(SECRET_EXAMPLE)[0]["stringData"]
    stripe = [p for p in config["processors"] if p["kind"] == "stripe"]
    bridgepay = [p for p in config["processors"] if p["kind"] == "bridgepay"]
    assert stripe and bridgepay
    assert secret["stripe-api-key"].startswith("sk_test_"), "test mode: a Stripe test key"
    assert all(p["base_url"] == BRIDGEPAY_TEST_HOST for p in bridgepay), "test mode: BridgePay's test host"
    text = config_map["data"]["gateway.toml"]
    assert "sk_live" not in text and "live" not in " ".join(p["id"] for p in config["processors"])
    for p in bridgepay:
        assert p["merchant_code"].startswith("${") and p["merchant_account_code"].startswith("${"), (
            "an account's codes come with its credentials, not as made-up numbers")


# --- docker compose ----------------------------------------------------------------------------

def test_deploy_env_is_ignored_by_git():
    assert "deploy/.env" in (REPO / ".gitignore").read_text().split()
    if shutil.which("git") and (REPO / ".git").exists():
        assert subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO).returncode == 0


def compose_claim() -> tuple[int, str]:
    """The port and the key that the compose files say the README's session needs against the stack."""
    text = COMPOSE.read_text()
    port = re.search(r"GW=http://127\.0\.0\.1:(\d+)", text)
    key = re.search(r"KEY=(\S+) \(BILLING_CORE_API_KEY", text)
    assert port and key, "deploy/docker-compose.yml no longer says how the README's session differs"
    return int(port.group(1)), key.group(1)


def test_the_compose_files_name_the_port_and_key_the_stack_really_has():
    port, key = compose_claim()
    compose = interpolate(docs(COMPOSE)[0])
    gateway = compose["services"]["gateway-1"]
    assert f"127.0.0.1:{port}:8080" in gateway["ports"]
    assert gateway["environment"]["BILLING_CORE_API_KEY"] == key
    assert f"GW=http://127.0.0.1:{port}" in (DEPLOY / "compose.toml").read_text()
    assert key in (DEPLOY / "compose.toml").read_text()
    deployment = (REPO / "docs" / "deployment.md").read_text()
    assert f"`GW=http://127.0.0.1:{port}`" in deployment and f"`KEY={key}`" in deployment


def session_for(url: str, key: str, folder: Path) -> subprocess.CompletedProcess:
    """The README's walk-through, with the gateway's URL and `key` in place of the dev key."""
    script, _ = walkthrough()
    assert "KEY=sk_dev_0123456789abcdef" in script
    script = (mark_steps(script).replace("GW=http://127.0.0.1:8080", f"GW={url}")
              .replace("KEY=sk_dev_0123456789abcdef", f"KEY={key}")
              .replace("/tmp/refund.json", str(folder / "refund.json")))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=shell_env(),
                          cwd=folder)


def assert_session_answered(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stderr
    steps = dict(part.split("\n", 1) for part in run.stdout.split("@@step ")[1:])
    assert sorted(int(n) for n in steps) == [1, 2, 3, 4, 5, 6, 7], run.stdout
    assert '"status":"succeeded"' in steps["2"].replace(" ", ""), steps["2"]
    assert '"code":"amount_exceeds_refundable"' in steps["7"].replace(" ", ""), steps["7"]


@needs_shell
def test_the_readme_session_runs_against_the_compose_config_with_that_port_and_key(gateways, database_url,
                                                                                    tmp_path):
    _, key = compose_claim()
    gateway_env = interpolate(docs(COMPOSE)[0])["services"]["gateway-1"]["environment"]
    env = {name: str(value) for name, value in gateway_env.items() if name not in ("GATEWAY_CONFIG",)}
    env["GATEWAY_DATABASE_URL"] = database_url  # this test's database, not the `postgres` service
    gateway = gateways((DEPLOY / "compose.toml").read_text(), **env)
    gateway.wait_ready()
    assert_session_answered(session_for(gateway.url, key, tmp_path))


# --- the image and the stack, where a container engine is present --------------------------------

def container_engine() -> tuple[str | None, str]:
    """The engine to use, or why there is none."""
    found = [engine for engine in ("docker", "podman") if shutil.which(engine)]
    if not found:
        return None, "no container engine: neither docker nor podman is on the PATH"
    for engine in found:
        if subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0:
            return engine, ""
    return None, f"{' and '.join(found)} on the PATH, but no container engine answers (`{found[0]} info` fails)"


@pytest.fixture(scope="module")
def engine() -> str:
    engine, why = container_engine()
    if engine is None:
        pytest.skip(why)
    return engine


@pytest.fixture(scope="module")
def image(engine: str) -> str:
    """The image, built as docs/deployment.md says (the tag the compose file runs)."""
    build = subprocess.run([engine, "build", "-f", "deploy/Dockerfile", "-t", "psp-gateway:local", "."], cwd=REPO,
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-5000:]
    return "psp-gateway:local"


@pytest.mark.timeout(1800)
def test_the_image_builds_and_runs_the_gateway_and_the_simulators(engine, image):
    for command in (["psp-gateway", "--version"], ["psp-gateway", "worker", "--help"],
                    ["python", "-m", "adapters.stripe_sim", "--help"], ["python", "-m", "adapters.bridgepay_sim", "--help"]):
        run = subprocess.run([engine, "run", "--rm", image, *command], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{command}: {run.stderr[-2000:]}"


@needs_shell
@pytest.mark.timeout(1800)
def test_the_compose_stack_answers_the_readme_session(engine, image, tmp_path):
    if subprocess.run([engine, "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"`{engine} compose` does not run here")
    ports = {name: str(free_port()) for name in ("PSP_GATEWAY_1_PORT", "PSP_GATEWAY_2_PORT", "STRIPE_SIM_PORT",
                                                  "BRIDGEPAY_SIM_PORT")}
    compose = [engine, "compose", "-f", str(COMPOSE), "-p", f"psp-gateway-test-{uuid.uuid4().hex[:8]}"]
    env = {**os.environ, **ports}
    try:
        up = subprocess.run([*compose, "up", "--detach"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
        assert up.returncode == 0, up.stderr[-5000:]
        url = f"http://127.0.0.1:{ports['PSP_GATEWAY_1_PORT']}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run([*compose, "logs", "--no-color"], cwd=REPO, env=env, capture_output=True,
                                      text=True, timeout=120)
                pytest.fail(f"the stack's gateway-1 was not ready in 300 s:\n{logs.stdout[-5000:]}")
            time.sleep(2)
        _, key = compose_claim()
        assert_session_answered(session_for(url, key, tmp_path))
    finally:
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], cwd=REPO, env=env, capture_output=True,
                       timeout=300)
