"""deploy/ agrees with docs/contributing.md, the dev stack table, the collector and the code's metric names."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from imagegate.devstack.services import ADAPTERS, CORE, ENHANCER, ROUTER, SELF_HOSTED
from imagegate.telemetry import DEFAULT_METRICS_ADDRS
from imagegate.telemetry.setup import env_key

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SPECS = {s.name: s for s in (*CORE, *ADAPTERS, *SELF_HOSTED, ENHANCER, ROUTER)}
# docs/contributing.md "Ports and variables (fixed)".
TEAM_NOTES_PORTS = {
    "router": ("IMAGEGATE_ROUTER_ADDR", 50051),
    "quota": ("IMAGEGATE_QUOTA_ADDR", 50052),
    "metering": ("IMAGEGATE_METERING_ADDR", 50053),
    "local": ("IMAGEGATE_LOCAL_ADDR", 50060),
    "fal": ("IMAGEGATE_FAL_ADDR", 50061),
    "huggingface": ("IMAGEGATE_HF_ADDR", 50062),
    "replicate": ("IMAGEGATE_REPLICATE_ADDR", 50063),
    "bfl": ("IMAGEGATE_BFL_ADDR", 50064),
    "openai": ("IMAGEGATE_OPENAI_ADDR", 50065),
    "together": ("IMAGEGATE_TOGETHER_ADDR", 50066),
    "diffusers": ("IMAGEGATE_DIFFUSERS_ADDR", 50067),
    "comfyui": ("IMAGEGATE_COMFYUI_ADDR", 50068),
    "enhancer": ("IMAGEGATE_ENHANCER_ADDR", 50070),
}
PROVIDER_KEYS = {
    "fal": "FAL_KEY",
    "huggingface": "HF_TOKEN",
    "replicate": "REPLICATE_API_TOKEN",
    "bfl": "BFL_API_KEY",
    "openai": "OPENAI_API_KEY",
    "together": "TOGETHER_API_KEY",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def ours(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == "imagegate:dev"}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_every_service_of_team_notes_is_in_compose_with_its_fixed_port(ours):
    assert set(ours) == set(TEAM_NOTES_PORTS)
    for name, (var, port) in TEAM_NOTES_PORTS.items():
        env = ours[name]["environment"]
        assert env[var] == f"0.0.0.0:{port}", name
        assert env["HEALTH_ADDR"] == env[var], name  # the healthcheck probes the real port
        # Same module and variable as the dev stack supervisor runs.
        spec = SPECS[name]
        assert ours[name]["command"] == ["python", "-m", spec.module]
        assert (spec.addr_var, spec.default_port) == (var, port)


def test_metrics_ports_match_the_library_defaults_and_prometheus_scrapes_them(ours):
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "imagegate"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    expected = set()
    for name, service in ours.items():
        key = env_key(name)
        addr = service["environment"][f"IMAGEGATE_{key}_METRICS_ADDR"]
        assert _port(addr) == _port(DEFAULT_METRICS_ADDRS[key.lower()]), name
        assert addr.startswith("0.0.0.0:"), "must be reachable from the Prometheus container"
        expected.add(f"{name}:{_port(addr)}")
    assert targets == expected
    ports = [_port(DEFAULT_METRICS_ADDRS[k]) for k in DEFAULT_METRICS_ADDRS]
    grpc_ports = [p for _, p in TEAM_NOTES_PORTS.values()]
    assert len(set(ports)) == len(ports) and not set(ports) & set(grpc_ports)


def test_router_dials_what_the_others_listen_on(ours):
    env = ours["router"]["environment"]
    for var, target in (("IMAGEGATE_QUOTA_ADDR", "quota"), ("IMAGEGATE_METERING_ADDR", "metering")):
        host, port = env[var].split(":")
        assert host == target
        assert int(port) == TEAM_NOTES_PORTS[target][1]
    default = re.fullmatch(
        r"\$\{IMAGEGATE_ROUTER_ADAPTERS:-(.+)\}", env["IMAGEGATE_ROUTER_ADAPTERS"]
    )
    assert default is not None
    for item in default.group(1).split(","):
        name, target = item.split("=")
        host, port = target.split(":")
        assert host == name and int(port) == TEAM_NOTES_PORTS[name][1]
    deps = ours["router"]["depends_on"]
    assert {d for d, c in deps.items() if c["condition"] == "service_healthy"} >= {
        "quota",
        "metering",
        "local",
    }


def test_databases_point_at_the_compose_postgres(compose, ours):
    pg = compose["services"]["postgres"]["environment"]
    for name, var in (("quota", "QUOTA_DATABASE_URL"), ("metering", "METERING_DATABASE_URL")):
        url = urlparse(
            ours[name]["environment"][var].replace("${POSTGRES_PASSWORD:-imagegate}", "pw")
        )
        assert url.scheme == "postgresql+psycopg"
        assert (url.hostname, url.port, url.path.lstrip("/")) == (
            "postgres",
            5432,
            pg["POSTGRES_DB"],
        )
        assert url.username == pg["POSTGRES_USER"]
        assert ours[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["postgres"]


def test_secrets_come_from_the_environment_never_from_the_file(ours):
    for name, key_var in PROVIDER_KEYS.items():
        env = ours[name]["environment"]
        assert env[key_var] == f"${{{key_var}:-}}"
        assert ours[name]["profiles"] == ["providers"]  # hosted adapters are opt-in
    assert ours["quota"]["environment"]["IMAGEGATE_ADMIN_TOKEN"].startswith(
        "${IMAGEGATE_ADMIN_TOKEN:?"
    )


def test_telemetry_flows_service_to_collector_to_jaeger(compose, ours):
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    grpc_endpoint = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    for name, service in ours.items():
        env = service["environment"]
        endpoint = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", _port(grpc_endpoint)), name
        assert env["OTEL_TRACES_SAMPLER"].startswith("parentbased_"), name
        assert env["IMAGEGATE_LOG_FORMAT"] == "json"
    # Every pipeline component is defined; traces end at Jaeger's OTLP port.
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in collector[kind], component
    assert "otlp/jaeger" in collector["service"]["pipelines"]["traces"]["exporters"]
    jaeger_host, jaeger_port = collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")
    jaeger = compose["services"][jaeger_host]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true" and jaeger_port == "4317"
    assert "16686:16686" in jaeger["ports"]
    published = [p.split(":")[0] for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish the same host port"


def test_alerts_only_use_metrics_the_code_defines():
    sources = [
        ROOT / "services/router/observability.py",
        ROOT / "libs/imagegate/telemetry/metrics.py",
    ]
    defined = {
        name.replace(".", "_")
        for path in sources
        for name in re.findall(r'"(imagegate\.[a-z_.]+)"', path.read_text())
    }
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    used = set()
    for group in alerts["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"]
            used.update(
                re.findall(
                    r"\b(imagegate_[a-z_]+?)(?:_total|_seconds_bucket|_seconds_count|_bucket|_count)?\b",
                    rule["expr"],
                )
            )
    assert used, "alerts reference no imagegate metric"
    assert used <= defined, used - defined


def test_dockerfile_installs_from_the_lock_and_drops_root():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "-c requirements.lock" in text
    assert "COPY libs" in text and "COPY services" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
