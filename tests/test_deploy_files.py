"""The deployment files in deploy/: the image, the compose stack, the Kubernetes manifests.

No container engine, cluster or Grafana server runs here, so these tests check what can be
checked without one: each file against its validator (hadolint, the compose specification's
schema, the Kubernetes API schemas) and the properties an operator would look for by hand
(a pinned base, a non-root user, a health check, no secret written inline, every mounted file
present in the repository).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from routewatch.alerting import GRAFANA_FILE, RULES_FILE, Deployment, plan_alerts, render_files
from routewatch.config import Config, load_config
from routewatch.config.durations import parse_duration
from routewatch.config.loader import parse_config
from routewatch.prober_workers import prober_stop_limit_s

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
STACK_CONFIG = DEPLOY / "config" / "probes.yaml"
# `routewatch alerts render --config deploy/config/probes.yaml --out deploy/compose/alerts`
STACK_ALERTS = DEPLOY / "compose" / "alerts"
# The validators come with the test extra (pyproject.toml), as console scripts beside this Python.
TOOLS = Path(sys.executable).parent
# An interpolation of deploy/.env: ${NAME}, ${NAME:-default} or ${NAME:?message}.
INTERPOLATION = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|DATABASE_URL|WEBHOOK", re.IGNORECASE)


def _tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{name} is missing: pip install -e '.[test]' installs it"
    return str(path)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


# --- the image ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


@pytest.mark.system
def test_the_dockerfile_is_hadolint_clean() -> None:
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_every_base_image_is_a_slim_python_pinned_by_exact_version_or_digest() -> None:
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "the image is built in stages: the wheel first, the runtime from it"
    for base in bases:
        pinned = re.fullmatch(r"python:3\.1[12]\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", base)
        assert pinned, f"{base}: pin a slim Python 3.11/3.12 base by its full version (and digest)"


@pytest.mark.unit
def test_the_runtime_stage_runs_as_a_non_root_user_and_installs_only_the_built_wheel() -> None:
    final = _final_stage()
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert copies and all(args.startswith("--from=") for args in copies), f"sources copied into the runtime: {copies}"
    installs = [args for keyword, args in final if keyword == "RUN" and "pip install" in args]
    assert installs and all(".whl" in args for args in installs), installs


@pytest.mark.unit
def test_one_image_for_every_command_with_a_healthcheck_on_healthz_without_curl() -> None:
    final = dict(_final_stage())
    assert final["ENTRYPOINT"] == '["routewatch"]'
    healthcheck = final["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib.request" in healthcheck and "curl" not in healthcheck
    assert "8321" in healthcheck and final["EXPOSE"] == "8321"


@pytest.mark.unit
def test_the_build_context_holds_only_what_the_wheel_is_built_from() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore, "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for keyword, args in _instructions():
        if keyword == "COPY" and not args.startswith("--from="):
            copied.update(source.rstrip("/") for source in args.split()[:-1])  # the last word is the destination
    assert copied <= allowed, f"copied but excluded from the context: {copied - allowed}"
    assert not {".venv", "tests", "bench", "deploy"} & allowed


# --- the compose stack ----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _one_shots(services: dict[str, Any]) -> set[str]:
    """Services others wait on to *complete*: they exit by design and need no health check."""
    return {
        name
        for service in services.values()
        for name, condition in (service.get("depends_on") or {}).items()
        if condition.get("condition") == "service_completed_successfully"
    }


@pytest.mark.system
def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _run("git", "ls-files", "deploy/.env").stdout == "", "deploy/.env (the secrets) is committed"


@pytest.mark.unit
def test_the_stack_has_the_production_shape() -> None:
    services = _compose()["services"]
    commands = {name: service.get("command", []) for name, service in services.items()}
    probers = {name: cmd for name, cmd in commands.items() if cmd[:1] == ["probe"]}
    servers = [name for name, cmd in commands.items() if cmd[:1] == ["serve"]]
    assert len(servers) == 2, servers
    regions = set()
    for name, cmd in probers.items():
        config = cmd[cmd.index("--config") + 1].replace("/etc/routewatch", str(DEPLOY / "config"))
        assert config == str(STACK_CONFIG), f"{name}: every prober reads the stack's one probes.yaml"
        region = services[name]["environment"]["ROUTEWATCH_REGION"]
        assert name == f"probe-{region}", f"{name} probes as region {region}"
        regions.add(region)
        assert cmd[cmd.index("--metrics-port") + 1] == "9464", f"{name}: its health check and Prometheus read :9464"
        check = services[name]["healthcheck"]["test"]
        assert "http://127.0.0.1:9464/healthz" in check[-1], f"{name}: its liveness is its /healthz"
        environment = services[name]["environment"]
        assert set(services["serve-1"]["environment"]) | {"ROUTEWATCH_REGION"} == set(environment), name
    assert len(regions) == 2, f"probers for two regions, found {regions}"
    assert "region" not in yaml.safe_load(STACK_CONFIG.read_text(encoding="utf-8")), "the region is each prober's"
    for name in servers:
        assert commands[name][commands[name].index("--config") + 1] == "/etc/routewatch/probes.yaml", name
    assert [name for name, cmd in commands.items() if cmd == ["db", "migrate"]] == ["migrate"]
    images = {name: service["image"] for name, service in services.items()}
    assert images["timescaledb"].startswith("timescale/timescaledb:")
    for name, image in images.items():
        _, _, tag = image.partition(":")
        assert re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"{name}: pin {image} by exact version"
    assert {"prometheus", "alertmanager", "grafana"} <= set(services)


@pytest.mark.unit
def test_every_service_is_health_checked_or_a_one_shot_and_waits_on_the_right_condition() -> None:
    services = _compose()["services"]
    one_shots = _one_shots(services)
    assert one_shots == {"migrate"}
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if name in one_shots:
            assert service.get("restart") == "no", f"{name} is a one-shot: it must not restart"
        else:
            assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}: {condition}"
    waits_for_migration = {name for name, service in services.items() if "migrate" in (service.get("depends_on") or {})}
    routewatch = {name for name, service in services.items() if service["image"].startswith("routewatch:")}
    assert waits_for_migration == routewatch - {"migrate", "simulator"}


@pytest.mark.unit
def test_no_secret_is_written_in_the_compose_file_and_the_env_file_is_not_committed() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                literal = INTERPOLATION.sub("", str(value))
                # What is left of a URL is its scheme, host and path: the credentials are interpolated.
                assert not re.search(r"://[^/@]*:[^/@]+@", literal), f"{name}.{key} holds a credential"
                if "://" not in str(value) or "WEBHOOK" in key:
                    assert literal == "", f"{name}.{key} is written inline: take it from deploy/.env"
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    example = DEPLOY / ".env.example"
    listed = {line.split("=", 1)[0] for line in example.read_text(encoding="utf-8").splitlines() if "=" in line}
    assert required <= listed, f"missing from deploy/.env.example: {required - listed}"
    assert "deploy/.env" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


@pytest.mark.unit
def test_every_mounted_file_exists_and_every_named_volume_is_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared, f"{name} uses the undeclared volume {source}"
                used.add(source)
    assert used == declared
    for name in ("timescaledb", "prometheus", "grafana", "probe-eu-west", "probe-us-east"):
        assert any(m.split(":")[0] in declared for m in compose["services"][name]["volumes"]), name


@pytest.mark.unit
def test_prometheus_in_the_stack_loads_the_shipped_rules_and_scrapes_both_replicas() -> None:
    prometheus = _compose()["services"]["prometheus"]
    mounts = dict(m.split(":")[:2] for m in prometheus["volumes"])
    config_path = DEPLOY / next(src for src, dst in mounts.items() if dst.endswith("prometheus.yml"))
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    rules_dst = {dst: src for src, dst in mounts.items()}
    for rule_file in config["rule_files"]:
        assert rules_dst["/etc/prometheus/" + rule_file] == "./compose/alerts/" + RULES_FILE
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {"serve-1:8321", "serve-2:8321"} <= targets
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def _rendered(config: Config, regions: tuple[str, ...]) -> dict[str, str]:
    """What `routewatch alerts render --region R ...` writes for ``config``, by relative path."""
    return render_files(plan_alerts(config, Deployment(regions=regions)))


def _compose_regions() -> tuple[str, ...]:
    """The regions of the compose stack's probers, in the order the file lists them."""
    services = _compose()["services"].values()
    return tuple(s["environment"]["ROUTEWATCH_REGION"] for s in services if s.get("command", [])[:1] == ["probe"])


def _kubernetes_regions() -> tuple[str, ...]:
    """The regions of the kustomize base's prober Deployments, in name order."""
    probers = sorted(
        (d for d in _of_kind("Deployment") if d["spec"]["template"]["metadata"]["labels"].get("routewatch.io/region")),
        key=lambda d: d["metadata"]["name"],
    )
    return tuple(d["spec"]["template"]["metadata"]["labels"]["routewatch.io/region"] for d in probers)


@pytest.mark.unit
def test_the_stacks_alert_rules_are_rendered_from_the_stacks_configuration() -> None:
    regions = _compose_regions()
    assert regions == ("eu-west", "us-east")
    rendered = _rendered(load_config(STACK_CONFIG), regions)
    committed = {p.relative_to(STACK_ALERTS).as_posix() for p in STACK_ALERTS.rglob("*") if p.is_file()}
    again = (
        "run `routewatch alerts render --config deploy/config/probes.yaml --out deploy/compose/alerts"
        + "".join(f" --region {r}" for r in regions)
        + "`"
    )
    assert committed == set(rendered), again
    for relative, text in rendered.items():
        assert (STACK_ALERTS / relative).read_text(encoding="utf-8") == text, f"{relative} is stale: {again}"
    routes = yaml.safe_load(rendered[RULES_FILE])["groups"][0]["rules"]
    stack = load_config(STACK_CONFIG)
    configured = {
        (r["labels"]["router"], r["labels"]["model"], r["labels"]["region"])
        for r in routes
        if r.get("record") == "routewatch:configured_route"
    }
    # Each route is expected from each region, so that one region falling silent is seen.
    assert configured == {(r.name, m, region) for r in stack.routers for m in r.models for region in regions}
    grafana = dict(m.split(":")[:2] for m in _compose()["services"]["grafana"]["volumes"])
    assert grafana["./compose/alerts/" + GRAFANA_FILE] == "/etc/" + GRAFANA_FILE, "the stack's, over the example's"


@pytest.mark.system
def test_promtool_accepts_the_stacks_rules_and_their_unit_tests_pass() -> None:
    from prometheus_tools import tool

    folder = STACK_ALERTS / "prometheus"
    tests = sorted(p.name for p in folder.glob("*.test.yml"))
    for args in (["check", "rules", "routewatch-rules.yml"], ["test", "rules", *tests]):
        result = subprocess.run([tool("promtool"), *args], cwd=folder, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


@pytest.mark.unit
def test_grafana_gets_every_variable_its_provisioning_files_expand() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    provisioning = DEPLOY / next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning")
    assert mounts["../dashboards"] == "/var/lib/grafana/dashboards/routewatch"
    expanded = set()
    for path in provisioning.rglob("*.yaml"):
        # Comments mention ${VAR} as the syntax; only what Grafana reads is expanded.
        text = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())
        expanded.update(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", text))
    assert expanded, "no variable found: the provisioning files moved?"
    assert expanded <= set(grafana["environment"]), (
        f"unset in Grafana's environment: {expanded - set(grafana['environment'])}"
    )


# --- the Kubernetes manifests ---------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
# prometheus-operator's custom resources: kubernetes-validate carries the schemas of Kubernetes' own
# API only, so these are skipped there by kind and checked below against what they must agree with
# (the rules rendered from the ConfigMap, the Service and the prober pods the monitors select).
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# The overlay's strategic-merge patch is a fragment of the serve Deployment, not a whole object.
PATCHES = {"serve-resources.yaml"}
SECRET_ENV = {"ROUTEWATCH_DATABASE_URL", "ROUTEWATCH_API_KEY", "ROUTEWATCH_ADMIN_TOKEN"}


def _objects(folder: Path) -> dict[str, dict[str, Any]]:
    """Every whole object of a kustomization folder by file name: its resources, less patches."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    found = {}
    for resource in kustomization["resources"]:
        path = folder / resource
        if path.is_file():
            found[resource] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return found


def _base() -> list[dict[str, Any]]:
    return list(_objects(BASE).values())


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in _base() if o["kind"] == kind]


def _pod_templates() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"] for o in _base() if o["kind"] in ("Deployment", "Job")}


def _validate_strictly(tmp_path: Path, documents: list[dict[str, Any]]) -> None:
    """kubernetes-validate --strict on each non-CRD object; every one must pass."""
    files = []
    for i, document in enumerate(d for d in documents if d["kind"] not in CRD_KINDS):
        path = tmp_path / f"{i:02d}-{document['kind']}-{document['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        files.append(str(path))
    result = _run(_tool("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(files), result.stdout


@pytest.mark.system
def test_every_base_and_overlay_object_is_valid_against_the_kubernetes_api_strictly(tmp_path: Path) -> None:
    documents = [*_base(), *_objects(OVERLAY).values()]
    assert sorted(p.name for p in OVERLAY.glob("*.yaml") if p.name != "kustomization.yaml") == sorted(
        [*(n for n in _objects(OVERLAY)), *PATCHES]
    ), "an overlay file that is neither a resource nor a known patch"
    _validate_strictly(tmp_path, documents)


@pytest.mark.system
def test_the_rendered_example_overlay_is_valid_against_the_kubernetes_api_strictly(tmp_path: Path) -> None:
    # kustomize itself, or the copy built into kubectl (.ci/run installs kustomize where neither is there).
    if kustomize := shutil.which("kustomize"):
        result = _run(kustomize, "build", str(OVERLAY))
    elif kubectl := shutil.which("kubectl"):
        result = _run(kubectl, "kustomize", str(OVERLAY))
    else:
        pytest.skip("neither kustomize nor kubectl (whose built-in kustomize renders the overlay) is installed")
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"routewatch"}
    serve = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "routewatch-serve")
    container = serve["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/routewatch:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}, "the overlay's patch merged"
    _validate_strictly(tmp_path, rendered)


@pytest.mark.unit
def test_every_pod_runs_non_root_on_a_read_only_root_with_limits_and_secrets_only_by_reference() -> None:
    templates = _pod_templates()
    assert set(templates) == {
        "routewatch-serve",
        "routewatch-probe-eu-west",
        "routewatch-probe-us-east",
        "routewatch-migrate",
    }
    for name, template in templates.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{name}: {kind}"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/var/lib/routewatch"]], f"{name}: the data dir and spool are writable"
            for variable in container.get("env", []):
                if variable["name"] in SECRET_ENV:
                    assert "value" not in variable and variable["valueFrom"]["secretKeyRef"]["name"] == "routewatch"


@pytest.mark.unit
def test_serve_runs_two_replicas_behind_a_service_with_health_probes_and_a_disruption_budget() -> None:
    (serve,) = (d for d in _of_kind("Deployment") if d["metadata"]["name"] == "routewatch-serve")
    assert serve["spec"]["replicas"] == 2
    container = serve["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pod_labels = serve["spec"]["template"]["metadata"]["labels"]
    (service,) = _of_kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {p["name"] for p in container["ports"]}
    (budget,) = _of_kind("PodDisruptionBudget")
    assert (
        budget["spec"]["minAvailable"] == 1 and budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    )
    (policy,) = _of_kind("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert {"Ingress", "Egress"} == set(policy["spec"]["policyTypes"])


@pytest.mark.unit
def test_one_prober_per_region_its_region_from_the_environment_its_health_on_its_metrics_port() -> None:
    (configmap,) = _of_kind("ConfigMap")
    probers = [
        d
        for d in _of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "probe"
    ]
    regions = set()
    for prober in probers:
        container = prober["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        assert args[0] == "probe"
        key = args[args.index("--config") + 1].removeprefix("/etc/routewatch/")
        assert key == "probes.yaml", "every prober reads the ConfigMap's one probes.yaml"
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["ROUTEWATCH_REGION"] == prober["metadata"]["labels"]["routewatch.io/region"]
        regions.add(env["ROUTEWATCH_REGION"])
        metrics = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert metrics == {"metrics": int(args[args.index("--metrics-port") + 1])}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert len(regions) == len(probers) == 2
    config = parse_config(configmap["data"]["probes.yaml"], "probes.yaml")
    assert config.region == "local" and "region" not in yaml.safe_load(configmap["data"]["probes.yaml"])
    (job,) = _of_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "migrate"]


@pytest.mark.unit
def test_the_prometheus_operator_objects_carry_the_rules_rendered_from_the_configmap_and_scrape_serve() -> None:
    (rule,) = _of_kind("PrometheusRule")
    (configmap,) = _of_kind("ConfigMap")
    regions = _kubernetes_regions()
    assert len(regions) == 2, regions
    rendered = _rendered(parse_config(configmap["data"]["probes.yaml"], "probes.yaml"), regions)
    groups = yaml.safe_load(rendered[RULES_FILE])["groups"]
    assert rule["spec"]["groups"] == groups, (
        "render the rules for the ConfigMap's probes.yaml, with a --region per prober Deployment, "
        "into prometheusrule.yaml"
    )
    (monitor,) = _of_kind("ServiceMonitor")
    (service,) = _of_kind("Service")
    base_labels = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))["labels"][0]["pairs"]
    service_labels = {**base_labels, **service["metadata"]["labels"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert service_labels[monitor["spec"]["jobLabel"]] == "routewatch", "the job the rules were rendered for"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


@pytest.mark.unit
def test_the_probers_are_scraped_since_only_they_export_the_route_counters_the_rules_read() -> None:
    (monitor,) = _of_kind("PodMonitor")
    probers = [t for name, t in _pod_templates().items() if name.startswith("routewatch-probe-")]
    assert len(probers) == 2
    for template in probers:
        assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    (serve,) = (t for name, t in _pod_templates().items() if name == "routewatch-serve")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= serve["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["interval"] == "15s" and endpoint["relabelings"] == [
        {"targetLabel": "job", "replacement": "routewatch-probers"}
    ]
    compose_jobs = {
        job["job_name"]
        for job in yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text(encoding="utf-8"))["scrape_configs"]
    }
    assert "routewatch-probers" in compose_jobs, "the same job in both shapes"
    rules = {r["expr"] for g in _of_kind("PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    assert any("routewatch_route_probes_total" in expr for expr in rules), "what the probers must export"


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "Ti": 1024.0**2}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


@pytest.mark.unit
def test_a_probers_spool_volume_outgrows_its_spool_limit_before_the_kubelet_evicts_it() -> None:
    (configmap,) = _of_kind("ConfigMap")
    spool_limit_mib = parse_config(configmap["data"]["probes.yaml"], "probes.yaml").storage.spool_max_mb
    for name, template in _pod_templates().items():
        if not name.startswith("routewatch-probe-"):
            continue
        (data,) = (v for v in template["spec"]["volumes"] if v["name"] == "data")
        size = _mebibytes(data["emptyDir"]["sizeLimit"])
        assert size >= 1.25 * spool_limit_mib, f"{name}: a full spool ({spool_limit_mib} MiB) would get the pod evicted"


# Docker's stop timeout when a service names none: SIGKILL this long after SIGTERM.
COMPOSE_DEFAULT_STOP_GRACE = "10s"


@pytest.mark.unit
def test_a_stopped_prober_is_given_the_time_to_finish_its_probes_and_store_them() -> None:
    """SIGTERM, the grace period, then SIGKILL: a grace shorter than the prober's own stop loses the
    probes in flight, and on Kubernetes the spool undelivered (an emptyDir goes with the pod)."""
    (configmap,) = _of_kind("ConfigMap")
    needed = prober_stop_limit_s(parse_config(configmap["data"]["probes.yaml"], "probes.yaml"))
    probers = {name: t for name, t in _pod_templates().items() if name.startswith("routewatch-probe-")}
    assert len(probers) == 2
    for name, template in probers.items():
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
        assert grace >= needed, f"{name}: {grace} s of grace, the prober may take {needed:g} s to stop"
    needed = prober_stop_limit_s(load_config(STACK_CONFIG))
    stack_probers = {name: s for name, s in _compose()["services"].items() if s.get("command", [])[:1] == ["probe"]}
    assert len(stack_probers) == 2
    for name, service in stack_probers.items():
        grace_s = parse_duration(service.get("stop_grace_period", COMPOSE_DEFAULT_STOP_GRACE))
        assert grace_s >= needed, f"{name}: {grace_s:g} s of grace, the prober may take {needed:g} s to stop"
