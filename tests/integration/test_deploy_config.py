"""The deployment files (docker-compose.yml, deploy/k8s/) against their schemas and the contract.

Docker and a cluster are not needed: the compose file is checked against the compose spec's
JSON schema vendored in check-jsonschema, the manifests against the Kubernetes schemas shipped
in kubernetes-validate, and every command they run against the contract's `clinic` commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import _unavailable

REPO = Path(__file__).parents[2]
CONTRACT = REPO.parent / "shared" / "CONTRACT.md"
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
SECRET_TEMPLATE = K8S / "secret.template.yaml"
MIGRATION_JOB = K8S / "migrate" / "db-upgrade-job.yaml"

SERVICES = ("booking", "forms", "notify")
ROLES = ("reception", "clinician", "admin")
# The `clinic` subcommands of CONTRACT.md's Commands table.
CONTRACT_SUBCOMMANDS = {"serve", "worker", "db upgrade", "seed-demo", "create-user", "create-token"}
# Kubernetes releases the manifests must be valid for: the oldest we support, and the newest
# whose schemas the installed kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

# Credentials allowed in clear in docker-compose.yml: the RabbitMQ and PostgreSQL images'
# development defaults, for containers published on this machine only (see the file's header).
DEV_PLACEHOLDER_PASSWORDS = {"guest", "postgres"}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCOUNT_SID)")
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@\s]+:([^@/\s]*)@")


# ---- loading ----------------------------------------------------------------------------


def load_compose() -> dict:
    # PyYAML's safe loader resolves the x-* anchors and `<<` merges as Compose does.
    return yaml.safe_load(COMPOSE.read_text())


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> Iterator[tuple[Path, dict]]:
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def manifests_of(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def pod_containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def compose_commands() -> dict[str, list[str]]:
    """`clinic` argv of every compose service built from our image (ENTRYPOINT ["clinic"])."""
    commands = {}
    for name, service in load_compose()["services"].items():
        if "build" not in service:
            continue
        entrypoint = service.get("entrypoint", ["clinic"])
        assert isinstance(entrypoint, list) and isinstance(service["command"], list), name
        commands[name] = [*entrypoint, *service["command"]]
    return commands


def k8s_commands() -> dict[str, list[str]]:
    commands = {}
    for doc in manifests_of("Deployment") + manifests_of("Job"):
        for container in pod_containers(doc):
            key = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            commands[key] = [*container.get("command", ["clinic"]), *container.get("args", [])]
    return commands


def all_commands() -> dict[str, list[str]]:
    return {**{f"compose/{k}": v for k, v in compose_commands().items()}, **k8s_commands()}


def contract_text() -> str:
    if not CONTRACT.exists():
        _unavailable(f"{CONTRACT} not found (shared/ is not beside the repository)")
    return CONTRACT.read_text()


def contract_section(heading: str) -> str:
    text = contract_text()
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section in CONTRACT.md"
    return match.group(1)


def contract_variables() -> set[str]:
    names = set()
    for line in contract_section("Configuration").splitlines():
        cells = line.split("|")
        if len(cells) > 2:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1]))
    assert names, "no variables found in CONTRACT.md's Configuration table"
    return names


# ---- the contract's commands -------------------------------------------------------------


def contract_problem(argv: list[str]) -> str | None:
    """Why `argv` is not one of the contract's `clinic` commands, or None when it is."""
    if not argv or argv[0] != "clinic":
        return "does not run `clinic`"
    match argv[1:]:
        case ["serve", service, *options]:
            if service not in SERVICES:
                return f"unknown service {service!r}"
            if len(options) % 2:
                return f"options without values: {options}"
            pairs = dict(zip(options[::2], options[1::2], strict=True))
            if len(pairs) != len(options) // 2 or not set(pairs) <= {"--host", "--port"}:
                return f"serve takes only --host H and --port P once each: {options}"
            if "--port" in pairs and not pairs["--port"].isdigit():
                return f"--port is not a number: {pairs['--port']!r}"
        case ["worker", service]:
            if service not in SERVICES:
                return f"unknown service {service!r}"
        case ["db", "upgrade"]:
            pass
        case ["db", "upgrade", service]:
            if service not in SERVICES:
                return f"unknown service {service!r}"
        case ["seed-demo"]:
            pass
        case ["create-user", email, "--role", role]:
            if "@" not in email or role not in ROLES:
                return "create-user EMAIL --role reception|clinician|admin"
        case ["create-token", _name]:
            pass
        case ["create-token", _name, "--role", role]:
            if role not in ROLES:
                return f"unknown role {role!r}"
        case _:
            return "not a contract command"
    return None


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["clinic", "serve", "booking", "--host", "0.0.0.0", "--port", "8000"], True),
        (["clinic", "serve", "notify"], True),
        (["clinic", "worker", "forms"], True),
        (["clinic", "db", "upgrade"], True),
        (["clinic", "db", "upgrade", "notify"], True),
        (["clinic", "create-token", "ci", "--role", "reception"], True),
        (["clinic", "serve", "billing"], False),
        (["clinic", "serve", "booking", "--workers", "4"], False),
        (["clinic", "serve", "booking", "--port"], False),
        (["clinic", "worker"], False),
        (["clinic", "db", "migrate"], False),
        (["gunicorn", "services.booking.app:create_app()"], False),
    ],
)
def test_command_table_accepts_only_contract_commands(argv, valid):
    assert (contract_problem(argv) is None) is valid


def test_command_table_matches_contract():
    found = set()
    for line in contract_section("Commands").splitlines():
        match = re.match(r"\|\s*`clinic ([^`]*)`", line)
        if match:
            words = []
            for word in match.group(1).split():
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            found.add(" ".join(words))
    assert found == CONTRACT_SUBCOMMANDS


def test_every_command_run_is_a_contract_command():
    commands = all_commands()
    assert len(commands) >= 1 + 6 + 1 + 6, sorted(commands)  # compose and k8s: migrate, 3x2
    problems = {name: contract_problem(argv) for name, argv in commands.items()}
    assert {name: why for name, why in problems.items() if why} == {}


def test_every_service_gets_a_web_process_and_a_worker():
    for commands in (compose_commands(), k8s_commands()):
        runs = {tuple(argv[1:3]) for argv in commands.values()}
        for service in SERVICES:
            assert ("serve", service) in runs
            assert ("worker", service) in runs
        assert ("db", "upgrade") in runs


def clinic_executable() -> Path:
    cli = REPO / "services" / "cli.py"
    if not (cli.exists() or cli.with_suffix("").is_dir()):
        _unavailable("services/cli.py (the `clinic` command) is not written yet")
    for candidate in (Path(sys.executable).with_name("clinic"), REPO / ".venv" / "bin" / "clinic"):
        if candidate.exists():
            return candidate
    _unavailable("the `clinic` console script is not installed yet")


@pytest.mark.parametrize("argv", sorted({tuple(a[1:3]) for a in all_commands().values()}))
def test_clinic_accepts_the_command(argv, tmp_path):
    clinic = clinic_executable()
    result = subprocess.run(
        [str(clinic), *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "CLINIC_VAR_DIR": str(tmp_path / "var")},
    )
    assert result.returncode == 0, result.stderr


# ---- docker-compose.yml -----------------------------------------------------------------


def test_compose_file_matches_the_compose_spec():
    # The vendored schema ships inside check-jsonschema: nothing is downloaded.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_env_has_every_contract_variable():
    compose = load_compose()
    for name in compose_commands():
        environment = compose["services"][name]["environment"]
        assert isinstance(environment, dict), name
        missing = contract_variables() - set(environment)
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_compose_env_values_are_the_production_shapes():
    env = load_compose()["x-clinic-env"]
    assert env["AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672//"
    for service in SERVICES:
        assert env[f"{service.upper()}_DATABASE_URL"] == (
            f"postgresql+psycopg://postgres:postgres@postgres:5432/{service}"
        )
    assert env["CLINIC_TIMEZONE"] == "Europe/London"
    assert env["REMINDER_OFFSETS"] == "48h,2h"
    assert env["QUIET_HOURS"] == "21:00-08:00"
    for required in ("SECRET_KEY", "PHONE_WEBHOOK_SECRET"):
        assert env[required].startswith(f"${{{required}:?"), required


def test_postgres_init_creates_one_database_per_service():
    compose = load_compose()
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/init.sql:ro" in mounts
    sql = (REPO / "deploy" / "postgres" / "init.sql").read_text()
    created = set(re.findall(r"^CREATE DATABASE (\w+);", sql, re.M))
    assert created == set(SERVICES)


def test_compose_start_order_and_healthchecks():
    services = load_compose()["services"]
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "ping",
    ]
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in SERVICES:
        for process in ("web", "worker"):
            depends = services[f"{service}-{process}"]["depends_on"]
            assert depends["migrate"]["condition"] == "service_completed_successfully"
            assert depends["rabbitmq"]["condition"] == "service_healthy"


def test_compose_web_services_serve_and_healthcheck_the_published_port():
    services = load_compose()["services"]
    for service, host_port in zip(SERVICES, (5001, 5002, 5003), strict=True):
        web = services[f"{service}-web"]
        argv = web["command"]
        port = argv[argv.index("--port") + 1]
        assert argv[argv.index("--host") + 1] == "0.0.0.0"
        assert web["ports"] == [f"127.0.0.1:{host_port}:{port}"]  # not on the LAN
        probe = " ".join(web["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe
        assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"] in web["tmpfs"]


def test_compose_has_no_plain_text_secrets():
    compose = load_compose()
    envs = [compose["x-clinic-env"]]
    envs += [service.get("environment", {}) for service in compose["services"].values()]
    for env in envs:
        for name, value in env.items():
            value = str(value)
            if SECRET_NAME.search(name) and name != "POSTGRES_PASSWORD":
                # Only from the operator's environment / .env, never with a default value.
                assert re.fullmatch(rf"\$\{{{name}(:\?[^}}]*|:-)\}}", value), (name, value)
            password = URL_PASSWORD.match(value)
            if password:
                assert password.group(1) in DEV_PLACEHOLDER_PASSWORDS, (name, value)
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "postgres"
    # The placeholders are harmless only while nothing outside this machine can reach them.
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_env_example_holds_placeholders_only():
    for line in (REPO / "deploy" / "compose.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert not SECRET_NAME.search(name) or "placeholder" in value, line


def test_image_runs_clinic_as_non_root():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "--constraint constraints.txt" in dockerfile
    assert re.search(r'^ENTRYPOINT \["clinic"\]$', dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", ".env", "var"} <= set(ignored)


# ---- deploy/k8s -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path, version):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        # strict: a misspelt or misplaced field is an error, not silently ignored.
        kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "clinic-events"


def test_kustomization_applies_everything_but_the_secret_template_and_the_job():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in manifest_files() if p.parent == K8S} - {SECRET_TEMPLATE.name}
    assert set(kustomization["resources"]) == expected
    assert kustomization["namespace"] == "clinic-events"


def test_web_deployments_probe_healthz_and_readyz_on_the_served_port():
    webs = [d for d in manifests_of("Deployment") if d["metadata"]["name"].endswith("-web")]
    assert {d["metadata"]["name"] for d in webs} == {f"{s}-web" for s in SERVICES}
    for deployment in webs:
        (container,) = pod_containers(deployment)
        args = container["args"]
        port = int(args[args.index("--port") + 1])
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # Ready with its database (migrated to this image's schema); the broker is the
        # workers' concern, and a web pod serves while it is away (the outbox holds events).
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz/database",
                                                          "port": "http"}
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts


def test_services_select_their_web_pods():
    deployments = {d["metadata"]["name"]: d for d in manifests_of("Deployment")}
    services = manifests_of("Service")
    assert {s["metadata"]["name"] for s in services} == {f"{s}-web" for s in SERVICES}
    for service in services:
        deployment = deployments[service["metadata"]["name"]]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (container,) = pod_containers(deployment)
        port_names = {p["name"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_deployment_selectors_match_their_pods():
    for deployment in manifests_of("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pods_get_the_whole_contract_configuration():
    (config_map,) = manifests_of("ConfigMap")
    (secret,) = manifests_of("Secret")
    names = {config_map["metadata"]["name"], secret["metadata"]["name"]}
    missing = contract_variables() - set(config_map["data"]) - set(secret["stringData"])
    assert not missing
    for doc in manifests_of("Deployment") + manifests_of("Job"):
        for container in pod_containers(doc):
            refs = {
                (ref.get("configMapRef") or ref.get("secretRef"))["name"]
                for ref in container["envFrom"]
            }
            assert refs == names, doc["metadata"]["name"]


def test_k8s_secrets_are_only_in_the_secret_template_as_placeholders():
    (config_map,) = manifests_of("ConfigMap")
    for name, value in config_map["data"].items():
        assert not SECRET_NAME.search(name), name
        assert not URL_PASSWORD.match(value), name
    (secret,) = manifests_of("Secret")
    assert "data" not in secret  # base64 would hide a real value from this check
    for name, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, name
    assert "TEMPLATE, NOT A SECRET" in SECRET_TEMPLATE.read_text()
    for doc in manifests_of("Deployment") + manifests_of("Job"):
        for container in pod_containers(doc):
            for env in container.get("env", []):
                assert not SECRET_NAME.search(env["name"]), env["name"]
                assert not URL_PASSWORD.match(env.get("value", "")), env["name"]


def test_pods_run_as_non_root_without_privileges():
    for doc in manifests_of("Deployment") + manifests_of("Job"):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_migration_job_runs_the_image_the_release_rolls_out():
    """Applied through its own kustomization with the same `images:` as the processes':
    with -f, the Job ran the image written in it, and the new code started on old tables."""
    main = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    migrate = yaml.safe_load((MIGRATION_JOB.parent / "kustomization.yaml").read_text())
    assert migrate["resources"] == [MIGRATION_JOB.name]
    assert migrate["images"] == main["images"]
    assert migrate["namespace"] == main["namespace"]
    assert "apply -k deploy/k8s/migrate" in (REPO / "deploy" / "README.md").read_text()


def _gunicorn_graceful_seconds() -> int:
    source = (REPO / "shared" / "server.py").read_text()
    return int(re.search(r'"graceful_timeout": (\d+)', source).group(1))


def test_web_pods_stop_serving_gracefully_within_their_grace_period():
    """A wait before SIGTERM (the Service stops routing here meanwhile), then gunicorn's
    graceful stop, all inside the grace period; and gunicorn's processes set, not one per
    CPU of the node."""
    config = next(d for d in manifests_of("ConfigMap"))["data"]
    assert config["WEB_CONCURRENCY"] == "2" and config["WEB_THREADS"] == "2"
    for deployment in manifests_of("Deployment"):
        if not deployment["metadata"]["name"].endswith("-web"):
            continue
        (container,) = pod_containers(deployment)
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert int(command[1]) + _gunicorn_graceful_seconds() < grace


def test_compose_waits_for_postgres_over_tcp_and_stops_web_gracefully():
    """While the postgres image initialises an empty volume it listens on its Unix socket
    only: a socket check passed before `migrate` could connect."""
    services = load_compose()["services"]
    test = services["postgres"]["healthcheck"]["test"]
    assert test[test.index("-h") + 1] == "127.0.0.1"
    for service in SERVICES:
        web = services[f"{service}-web"]
        assert int(web["stop_grace_period"].rstrip("s")) > _gunicorn_graceful_seconds()
        assert web["environment"]["WEB_CONCURRENCY"] == "2"
