"""The deployment files, checked without Docker or a cluster: every YAML parses, the Kubernetes
manifests validate (strict) against a Kubernetes version kubernetes-validate bundles and hang
together, the compose file and the Dockerfile have what running them needs, every command line in
them is one the CLIs accept, and the config files they point at load with gateway.settings.
(No compose JSON schema ships in an installed package, so the compose file is checked structurally.)"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.bridgepay_sim.__main__ import parse_args as bridgepay_sim_args
from adapters.stripe_sim.__main__ import parse_args as stripe_sim_args
from gateway.app import create_app
from gateway.cli import main as gateway_cli
from gateway.routes import ops
from gateway.settings import Settings, load_settings
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S_VERSION = kubernetes_validate.latest_version()

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
# What `kubectl apply -k deploy/k8s/` applies; the example Secret is outside that set.
K8S_FILES = sorted(K8S / name for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
SECRET_EXAMPLE = K8S / "examples" / "secret.example.yaml"


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_docs() -> list[dict]:
    return [doc for path in K8S_FILES for doc in load_yaml(path)]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s/, found {len(found)}"
    return found[0]


def serve_deployment() -> dict:
    return one("Deployment", "psp-gateway")


def deployments() -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == "Deployment"]


def secret_example() -> dict:
    (secret,) = load_yaml(SECRET_EXAMPLE)
    return secret


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def assert_real_command(argv: list[str], monkeypatch, capsys) -> None:
    """The command line parses with the CLI it names. `psp-gateway` is run for real with a config
    file that does not exist: it stops right after parsing, with exit 2 and a config message, where
    an unknown subcommand or option makes argparse exit instead."""
    try:
        if argv[:1] == ["psp-gateway"]:
            monkeypatch.setenv("GATEWAY_CONFIG", str(REPO / "no-such-config.toml"))
            assert gateway_cli(argv[1:]) == 2
            assert "no such file" in capsys.readouterr().err
        elif argv[:3] == ["python", "-m", "adapters.stripe_sim"]:
            stripe_sim_args(argv[3:])
        elif argv[:3] == ["python", "-m", "adapters.bridgepay_sim"]:
            bridgepay_sim_args(argv[3:])
        else:
            pytest.fail(f"{argv}: not a command this project provides")
    except SystemExit as e:
        pytest.fail(f"{argv}: the CLI refuses it (exit {e.code})")


# --- YAML ---------------------------------------------------------------------------------------

def test_there_are_manifests_to_check():
    assert COMPOSE in YAML_FILES and len(K8S_FILES) >= 6


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_under_deploy_parses(path):
    assert load_yaml(path), f"{path} holds no document"


# --- Kubernetes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [*K8S_FILES, SECRET_EXAMPLE], ids=lambda p: p.name)
def test_every_kubernetes_manifest_is_valid_for_a_recent_kubernetes(path):
    for doc in load_yaml(path):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {doc.get('kind')}: {e.message} at {'.'.join(map(str, e.path))}")


def test_the_manifests_hold_every_kind_a_deployment_needs():
    kinds = {(d["apiVersion"], d["kind"]) for d in k8s_docs()}
    assert {("apps/v1", "Deployment"), ("v1", "Service"), ("batch/v1", "Job"), ("policy/v1", "PodDisruptionBudget"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"), ("v1", "ConfigMap")} <= kinds
    assert ("v1", "Secret") not in kinds, "an applied Secret would overwrite the real one with placeholders"


def test_the_deployment_runs_serve_with_probes_resources_and_no_root():
    deployment = serve_deployment()
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler sets the replicas"
    assert container["command"] == ["psp-gateway", "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_HOST"] == "0.0.0.0" and int(env["GATEWAY_PORT"]) == ports["http"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] in ports, probe
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_probes_ask_routes_the_gateway_serves():
    routes = {r.canonical for r in create_app(Settings()).router.resources()}
    container = pod_spec(serve_deployment())["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in routes, probe


def test_every_secret_and_config_map_reference_resolves():
    secret, config_map = secret_example(), one("ConfigMap")
    for workload in (*deployments(), one("Job")):
        spec = pod_spec(workload)
        for container in spec["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"], var["name"]
                    assert ref["key"] in secret["stringData"], var["name"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] == config_map["metadata"]["name"]
                assert {i["key"] for i in volume["configMap"].get("items", [])} <= set(config_map["data"])


def deployment_environment() -> dict[str, str]:
    """The environment the Deployment gives the gateway, with the example Secret's values."""
    secret = secret_example()["stringData"]
    container = pod_spec(serve_deployment())["containers"][0]
    return {var["name"]: var["value"] if "value" in var else secret[var["valueFrom"]["secretKeyRef"]["key"]]
            for var in container["env"]}


def test_the_config_map_loads_with_the_deployment_environment(tmp_path, monkeypatch):
    deployment, config_map = serve_deployment(), one("ConfigMap")
    container = pod_spec(deployment)["containers"][0]
    env = deployment_environment()
    # GATEWAY_CONFIG names the file the ConfigMap volume puts there.
    mount = next(m for m in container["volumeMounts"] if env["GATEWAY_CONFIG"].startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["configMap"]["items"]
                if f"{mount['mountPath']}/{i['path']}" == env["GATEWAY_CONFIG"])
    config = tmp_path / "gateway.toml"
    config.write_text(config_map["data"][item["key"]])
    for name, value in {**env, "GATEWAY_CONFIG": str(config)}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert {p.kind for p in settings.processors} == {"stripe", "bridgepay"}
    assert {c.id for c in settings.clients} == {"billing-core", "operator"}
    assert settings.host == "0.0.0.0" and settings.database_url is not None


def test_service_budget_and_autoscaler_point_at_the_deployment():
    deployment = serve_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in pod_spec(deployment)["containers"][0]["ports"]}
    service, budget, autoscaler = one("Service"), one("PodDisruptionBudget"), one("HorizontalPodAutoscaler")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] >= 2 and budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]


def test_the_workloads_run_real_commands(monkeypatch, capsys):
    job = one("Job")
    assert pod_spec(job)["containers"][0]["command"] == ["psp-gateway", "migrate"]
    for workload in (*deployments(), job):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert_real_command(container["command"], monkeypatch, capsys)


# --- docker compose -----------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value):
    """What compose makes of ${NAME:-default} with nothing set in the shell or deploy/.env."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            assert m.group(2) is not None, f"${{{m.group(1)}}} has no default: `compose up` would need it set"
            return m.group(2)
        return _COMPOSE_VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(load_yaml(COMPOSE)[0])


def command_of(service: dict) -> list[str]:
    command = service.get("command") or dockerfile_cmd()
    return shlex.split(command) if isinstance(command, str) else command


def test_compose_has_postgres_migrate_two_gateways_and_both_simulators(compose):
    assert {"postgres", "migrate", "gateway-1", "gateway-2", "stripe-sim", "bridgepay-sim"} <= set(compose["services"])


def test_postgres_has_a_healthcheck_and_keeps_its_data_in_a_named_volume(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["healthcheck"]["test"] and not postgres["healthcheck"].get("disable")
    sources = {v.split(":")[0] for v in postgres["volumes"]}
    assert sources & set(compose.get("volumes") or {}), "the data must outlive the container"


def test_migrate_runs_once_after_postgres_is_healthy(compose):
    migrate = compose["services"]["migrate"]
    assert command_of(migrate) == ["psp-gateway", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"


@pytest.mark.parametrize("name", ["gateway-1", "gateway-2"])
def test_each_gateway_replica_serves_after_postgres_is_healthy_and_migrations_completed(compose, name):
    gateway = compose["services"][name]
    assert command_of(gateway)[:2] == ["psp-gateway", "serve"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert urlsplit(gateway["environment"]["GATEWAY_DATABASE_URL"]).hostname == "postgres"
    assert gateway["environment"]["GATEWAY_CONFIG"]


def test_the_two_replicas_share_one_image_one_database_and_one_config_on_distinct_ports(compose):
    first, second = compose["services"]["gateway-1"], compose["services"]["gateway-2"]
    for key in ("image", "command", "volumes"):
        assert first[key] == second[key], key
    assert first["environment"] == second["environment"]
    assert first["environment"]["GATEWAY_DATABASE_URL"] == compose["services"]["migrate"]["environment"][
        "GATEWAY_DATABASE_URL"]
    assert set(first["ports"]).isdisjoint(second["ports"])


def test_every_command_line_in_compose_is_a_real_cli(compose, monkeypatch, capsys):
    for service in compose["services"].values():
        if service.get("image", "").startswith("postgres"):
            continue
        assert_real_command(command_of(service), monkeypatch, capsys)


def test_the_simulators_listen_on_all_interfaces_where_the_config_points(compose):
    config = compose_config_text(compose["services"]["gateway-1"])
    for name, parse in (("stripe-sim", stripe_sim_args), ("bridgepay-sim", bridgepay_sim_args)):
        args, _ = parse(command_of(compose["services"][name])[3:])
        assert args.host == "0.0.0.0", name
        assert f"http://{name}:{args.port}" in config, f"no processor in the config points at {name}"


def test_the_stripe_simulator_signs_webhooks_for_a_gateway_it_can_reach(compose):
    _, sim = stripe_sim_args(command_of(compose["services"]["stripe-sim"])[3:])
    target = urlsplit(sim.webhook_url)
    gateway = compose["services"]["gateway-1"]
    names = {"gateway-1", "gateway-2", *gateway["networks"]["default"]["aliases"]}
    assert target.hostname in names and target.port == 8080 and target.path == "/v1/webhooks/stripe"
    assert sim.webhook_secrets == [gateway["environment"]["STRIPE_WEBHOOK_SECRET"]]
    assert sim.api_key == gateway["environment"]["STRIPE_API_KEY"]


def test_every_file_compose_refers_to_exists(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def compose_config_text(gateway: dict) -> str:
    return mounted_config(gateway).read_text()


def mounted_config(gateway: dict) -> Path:
    """The file on this machine that the service sees at GATEWAY_CONFIG."""
    inside = gateway["environment"]["GATEWAY_CONFIG"]
    for volume in gateway["volumes"]:
        source, target = volume.split(":")[:2]
        if target == inside:
            return DEPLOY / source
    pytest.fail(f"nothing is mounted at GATEWAY_CONFIG={inside}")


def test_the_compose_config_loads_with_the_replicas_environment(compose, monkeypatch):
    gateway = compose["services"]["gateway-1"]
    for name, value in gateway["environment"].items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("GATEWAY_CONFIG", str(mounted_config(gateway)))
    settings = load_settings()
    assert {p.id: p.kind for p in settings.processors} == {"stripe": "stripe", "bridgepay": "bridgepay",
                                                           "mock": "mock"}
    assert {c.id for c in settings.clients} == {"billing-core", "operator"}


# --- Dockerfile ---------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def dockerfile_cmd() -> list[str]:
    return json.loads(instructions("CMD")[-1])


def dockerfile_env() -> dict[str, str]:
    env = {}
    for args in instructions("ENV"):
        env.update(token.split("=", 1) for token in args.split())
    return env


def healthcheck_command() -> list[str]:
    (healthcheck,) = instructions("HEALTHCHECK")
    return json.loads(healthcheck.split(" CMD ", 1)[1])


def test_the_image_builds_on_slim_python_3_11():
    bases = [args.split()[0] for args in instructions("FROM")]
    assert bases and all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", b) for b in bases), bases


def test_the_image_runs_as_a_non_root_user():
    steps = dockerfile()
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    users = [args for instruction, args in steps[last_from:] if instruction == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_the_image_serves_on_all_interfaces_on_the_port_it_exposes(monkeypatch, capsys):
    env = dockerfile_env()
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert instructions("EXPOSE") == [env.get("GATEWAY_PORT", "8080")]
    assert dockerfile_cmd()[:2] == ["psp-gateway", "serve"]
    assert_real_command(dockerfile_cmd(), monkeypatch, capsys)


def test_the_healthcheck_asks_healthz_with_python():
    command = healthcheck_command()
    assert command[0] == "python" and "/healthz" in " ".join(command)


async def run_healthcheck(port: int) -> int:
    command = healthcheck_command()
    process = await asyncio.create_subprocess_exec(sys.executable, *command[1:],
                                                   env={**os.environ, "GATEWAY_PORT": str(port)},
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_healthcheck_passes_while_the_gateway_answers_and_fails_when_nothing_listens():
    app = web.Application()
    app.add_routes(ops.routes)  # the gateway's own /healthz
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert await run_healthcheck(server.port) == 0
    finally:
        await server.close()
    assert await run_healthcheck(free_port()) != 0


def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pattern.rstrip("/")) for p in prefixes for pattern in patterns)


def test_the_build_copies_files_that_exist_and_are_not_dockerignored():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_the_build_context_leaves_out_local_state():
    patterns = set((REPO / ".dockerignore").read_text().split())
    for path in (".venv", ".gateway-data", ".git", "bench-results.json", ".pytest_cache", "tests/__pycache__"):
        assert dockerignored(path, list(patterns)), path
