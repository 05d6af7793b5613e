"""What can be checked about the Docker image, the compose stack and the dashboard without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import concrete, metric_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "chorus.json"

# The metrics the server contract promises (docs: server-contract / docs/deploy.md), by Prometheus type.
CONTRACT_METRICS = {
    "counter": {
        "chorus_requests_total",
        "chorus_audio_seconds_total",
        "chorus_adapter_cache_hits_total",
        "chorus_adapter_cache_misses_total",
        "chorus_adapter_loads_total",
        "chorus_adapter_load_seconds_total",
        "chorus_adapter_evictions_total",
        "chorus_tenant_audio_seconds_total",
        "chorus_tenant_refusals_total",
        "chorus_device_oom_total",
        "chorus_device_faults_total",
        "chorus_realtime_refusals_total",
        "chorus_auto_routes_total",
    },
    "histogram": {
        "chorus_request_duration_seconds",
        "chorus_queue_wait_seconds",
        "chorus_inference_duration_seconds",
        "chorus_batch_size",
        "chorus_batch_audio_seconds",
        "chorus_realtime_delta_latency_seconds",
    },
    "gauge": {
        "chorus_queue_depth",
        "chorus_queue_audio_seconds",
        "chorus_requests_in_flight",
        "chorus_adapter_resident_bytes",
        "chorus_adapters_resident",
        "chorus_device_memory_bytes",
        "chorus_batch_budget_ratio",
        "chorus_lora_requests_info",
        "chorus_realtime_sessions",
    },
}


def series_names(metrics: dict[str, set[str]]) -> set[str]:
    """Names a query can use: histograms expose _bucket/_sum/_count, counters and gauges their own name."""
    names = set(metrics["counter"]) | set(metrics["gauge"])
    for base in metrics["histogram"]:
        names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_dashboard_queries_name_only_exported_metrics():
    exported = series_names(CONTRACT_METRICS)
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        assert names <= exported, f"panel {title!r} uses metrics the server does not export: {names - exported}"
        used |= names
    # Every series the issue asks for is on the dashboard.
    for base in ("chorus_requests_total", "chorus_request_duration_seconds_bucket", "chorus_queue_depth"):
        assert base in used
    for base in ("chorus_batch_size", "chorus_audio_seconds_total", "chorus_adapter_cache_hits_total"):
        assert any(name.startswith(base) for name in used)
    for base in ("chorus_adapter_loads_total", "chorus_adapter_resident_bytes"):
        assert base in used


def test_dashboard_is_well_formed_for_provisioning():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert dashboard["uid"] and dashboard["title"] == "Chorus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_dashboard_queries_parse_as_promql(tmp_path):
    records = [{"record": f"chorus:panel_{i}", "expr": concrete(expr)} for i, (_, expr) in enumerate(dashboard_exprs())]
    rules = {"groups": [{"name": "dashboard", "rules": records}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_chorus_postgres_prometheus_and_grafana():
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"chorus", "postgres", "prometheus", "grafana"}
    chorus = services["chorus"]
    assert chorus["build"]["context"] == "."
    assert "chorus-data:/data" in chorus["volumes"]
    assert "8000:8000" in chorus["ports"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    assert "prometheus" in services["grafana"]["depends_on"] and "chorus" in services["prometheus"]["depends_on"]


def test_compose_keeps_tenant_state_in_the_postgres_service():
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    postgres, chorus = services["postgres"], services["chorus"]
    assert postgres["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])  # survives a re-create
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres  # reachable on the compose network only
    url = chorus["environment"]["CHORUS_DATABASE_URL"]
    database = postgres["environment"]["POSTGRES_DB"]
    assert re.fullmatch(rf"postgresql://{postgres['environment']['POSTGRES_USER']}:[^@]+@postgres:5432/{database}", url)
    assert chorus["depends_on"]["postgres"]["condition"] == "service_healthy"  # migrations run on start


def test_prometheus_scrapes_the_chorus_service():
    compose = load_yaml(ROOT / "docker-compose.yml")
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    chorus = jobs["chorus"]
    assert chorus.get("metrics_path", "/metrics") == "/metrics"
    container_port = compose["services"]["chorus"]["ports"][0].split(":")[-1]
    assert chorus["static_configs"][0]["targets"] == [f"chorus:{container_port}"]
    mount = next(v for v in compose["services"]["prometheus"]["volumes"] if "prometheus.yml" in v)
    assert mount.split(":")[1] in compose["services"]["prometheus"]["command"][0]
    # /metrics needs a metrics key: the one Chorus is given is the one Prometheus sends.
    secret = chorus["authorization"]["credentials_file"].removeprefix("/run/secrets/")
    assert secret in compose["services"]["prometheus"]["secrets"]
    source = compose["secrets"][secret]["environment"]
    assert f"${{{source}:?" in compose["services"]["chorus"]["environment"]["CHORUS_AUTH__KEYS"]
    assert '": "prometheus:metrics"}' in compose["services"]["chorus"]["environment"]["CHORUS_AUTH__KEYS"]


def test_compose_never_runs_chorus_without_keys():
    environment = load_yaml(ROOT / "docker-compose.yml")["services"]["chorus"]["environment"]
    assert ":?" in environment["CHORUS_AUTH__ADMIN_KEYS"]  # compose refuses to start while the key is unset
    assert "CHORUS_AUTH__ANONYMOUS" not in environment


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    compose = load_yaml(ROOT / "docker-compose.yml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "chorus.yml")["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in compose["services"]["prometheus"]["ports"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_follows_the_packaging_rules():
    steps = dockerfile_instructions()
    kinds = [kind for kind, _ in steps]
    args = {value.split("=")[0] for kind, value in steps if kind == "ARG"}
    assert {"PYTHON_IMAGE", "TORCH_SPEC", "TORCH_INDEX"} <= args
    assert re.search(r"python:3\.1\d-slim", dict(s for s in steps if s[0] == "ARG" and "PYTHON_IMAGE" in s[1])["ARG"])
    # Dependencies install from pyproject alone, before any source is copied (a separate, cached layer).
    copies = [i for i, (kind, _) in enumerate(steps) if kind == "COPY"]
    assert [steps[i][1] for i in copies[:2]] == ["pyproject.toml ./", "clients/pyproject.toml ./clients/"]
    dep_install = next(i for i, (kind, v) in enumerate(steps) if kind == "RUN" and "TORCH_INDEX" in v)
    assert copies[1] < dep_install < copies[2]
    for _, value in (steps[i] for i in copies):
        source = value.split()[0]
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    user = kinds.index("USER")
    assert steps[user][1] != "root" and user < kinds.index("CMD")
    assert any(kind == "HEALTHCHECK" and "/healthz" in value for kind, value in steps)
    assert any(kind == "VOLUME" and "/data" in value for kind, value in steps)
    assert json.loads(dict(s for s in steps if s[0] == "ENTRYPOINT")["ENTRYPOINT"]) == ["chorus"]
    assert json.loads(dict(s for s in steps if s[0] == "CMD")["CMD"])[0] == "serve"


def test_dependency_layer_reads_the_requirements_from_pyproject():
    # The Dockerfile's one-liner, run here: it must list exactly the two distributions' runtime dependencies and the
    # server's `postgres` and `lm` extras.
    run = next(value for kind, value in dockerfile_instructions() if kind == "RUN" and "tomllib" in value)
    code = re.search(r'python -c "(.+?)"\s*>', run)
    assert code is not None
    result = subprocess.run(["python3", "-c", code.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    import tomllib

    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]["dependencies"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "chorus-client==0.1.0" in server
    # With the `postgres` extra: the compose stack runs Chorus on PostgreSQL (CHORUS_DATABASE_URL); with `lm`: the
    # demo adapters decode with their language models (beam search).
    expected = client + [d for d in server if not d.startswith("chorus-client")] + extras["postgres"] + extras["lm"]
    assert result.returncode == 0 and result.stdout.split() == expected


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "tests"):
        assert entry in ignored
    for kind, value in dockerfile_instructions():
        if kind == "COPY":
            assert value.split()[0] not in ignored


def test_the_image_source_layer_installs_and_imports_on_its_own(tmp_path):
    """Build context = exactly what the Dockerfile copies; install it as the image does; import every module from it."""
    context = tmp_path / "context"
    context.mkdir()
    for kind, value in dockerfile_instructions():
        if kind == "COPY":
            source = value.split()[0]
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source, dirs_exist_ok=True)
            else:
                shutil.copy(ROOT / source, context / source)
    # Data files under chorus_server/demo_model must reach the installed package (the image serves the demo from it).
    probe = context / "server" / "chorus_server" / "demo_model" / "backbone" / "packaging-probe.json"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("{}")
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    sources = [str(context / "clients"), str(context)]
    result = subprocess.run([*install, "--target", str(site), *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (site / "chorus_server" / "demo_model" / "backbone" / "packaging-probe.json").is_file()
    # Only the project's own names at the top level of site-packages: nothing generic to collide with.
    tops = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))} - {"bin"}
    assert tops == {"chorus_client", "chorus_server", "chorus_store", "chorus_training"}
    check = (
        "import importlib, pkgutil, sys\n"
        "for top in ('chorus_server', 'chorus_store', 'chorus_client', 'chorus_training'):\n"
        "    package = importlib.import_module(top)\n"
        f"    assert package.__file__.startswith({str(site)!r}), package.__file__\n"
        "    for module in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "from chorus_server.app import create_app\n"
        "create_app()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    cli = subprocess.run(
        [sys.executable, str(site / "bin" / "chorus"), "--help"], env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0 and "transcribe" in cli.stdout


def test_the_client_distribution_installs_without_torch_or_the_server(tmp_path):
    """`pip install ./clients` as a fresh machine resolves it: no torch, no server, only chorus_client inside."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
    result = subprocess.run([*command, "--report", str(report), str(ROOT / "clients")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "chorus-client" in names and {"httpx", "pydantic", "tqdm"} <= names
    assert not names & {"torch", "chorus-asr", "numpy", "fastapi", "safetensors"}, names
    wheel_dir = tmp_path / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir)]
    result = subprocess.run([*build, str(ROOT / "clients")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    import zipfile

    (wheel,) = wheel_dir.glob("chorus_client-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"chorus_client", "chorus_client-0.1.0.dist-info"}


def test_the_kuberay_manifest_deploys_the_chorus_application():
    """The RayService's shape (KubeRay's ray.io/v1 CRD: the fields the operator requires) and the Serve config it
    carries, whose import path must name Chorus's application builder."""
    import importlib

    manifest = load_yaml(DEPLOY / "kuberay" / "rayservice.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    application = serve_config["applications"][0]
    module, _, name = application["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert application["runtime_env"]["env_vars"]["CHORUS_STORE"].startswith("s3://")
    assert int(application["args"]["workers"]) >= 1
