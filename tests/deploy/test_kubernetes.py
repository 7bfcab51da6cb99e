"""deploy/kubernetes renders with kustomize and keeps its promises: probes, limits, non-root,
secrets only in Secrets, a Router that survives a lost replica, PostgreSQL URLs from a Secret.

Rendering uses the real `kubectl kustomize` (`make kubectl-bin` puts a pinned kubectl in .venv).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imagegate.devstack.services import ADAPTERS, CORE, ENHANCER, ROUTER, SELF_HOSTED, ServiceSpec
from imagegate.telemetry import DEFAULT_METRICS_ADDRS
from imagegate.telemetry.setup import env_key
from imagegate.textproviders import KEY_VARS as TEXT_KEY_VARS

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
POSTGRES = KUBERNETES / "overlays" / "postgres"
GPU = KUBERNETES / "overlays" / "gpu"
SPECS = {s.name: s for s in (*CORE, *ADAPTERS, *SELF_HOSTED, ENHANCER, ROUTER)}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|PEPPER|SECRET|CREDENTIAL", re.IGNORECASE)
# Values that look like a credential whatever the key: a URL with a password, provider key shapes.
SECRET_VALUE = re.compile(r"://[^/@\s]*:[^/@\s]+@|^(sk-|hf_|r8_|ig_|fal-)", re.IGNORECASE)
OTHER_SECRETS = ("IMAGEGATE_ADMIN_TOKEN", "IMAGEGATE_QUOTA_KEY_PEPPER")

Obj = dict


def kubectl() -> str:
    """The kubectl that renders: the pinned one in .venv (make kubectl-bin), else PATH's."""
    pinned = ROOT / ".venv" / "bin" / "kubectl"
    found = str(pinned) if os.access(pinned, os.X_OK) else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: run `make kubectl-bin` (make test does)")
    return found


def render(path: Path) -> list[Obj]:
    """`kubectl kustomize PATH` as a list of objects."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return render(POSTGRES)


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOAD_KINDS)


def ours(objs: list[Obj]) -> dict[str, Obj]:
    """imagegate's own workloads (image imagegate[:tag] or an override of it), by name."""
    return {
        w["metadata"]["name"]: w
        for w in workloads(objs)
        if any("imagegate" in c["image"] for c in w["spec"]["template"]["spec"]["containers"])
    }


def container(workload: Obj) -> Obj:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def environment(objs: list[Obj], c: Obj) -> dict[str, object]:
    """A container's variables: ConfigMap data by value, the rest as their valueFrom."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    env: dict[str, object] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def port(c: Obj, name: str) -> int:
    (p,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(p)


# Checks return what is wrong, so the tests below can also prove they catch a broken manifest.


def probe_problems(objs: list[Obj]) -> list[str]:
    bad = []
    for name, w in ours(objs).items():
        c = container(w)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = c.get(kind, {}).get("grpc")
            if grpc is None:
                bad.append(f"{name}: no grpc {kind}")
                continue
            # The gRPC port wants mTLS, which a kubelet probe cannot do: the process answers
            # grpc.health alone, in plaintext, on its `health` port (IMAGEGATE_HEALTH_PORT).
            if grpc.get("port") != port(c, "health"):
                bad.append(f"{name}: {kind} is not on the health port")
            # The whole server, never "provider.<name>": an upstream outage is not a dead pod.
            if grpc.get("service", "") != "":
                bad.append(f"{name}: {kind} asks for service {grpc['service']!r}")
    return bad


def resource_problems(objs: list[Obj]) -> list[str]:
    bad = []
    for w in workloads(objs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            for side in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in res.get(side, {}):
                        bad.append(f"{w['metadata']['name']}/{c['name']}: no {side}.{what}")
    return bad


def security_problems(objs: list[Obj]) -> list[str]:
    bad = []
    mine = ours(objs)
    for w in workloads(objs):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            if ctx.get("runAsNonRoot") is not True or not ctx.get("runAsUser"):
                bad.append(f"{name}: may run as root")
            if ctx.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{name}: privilege escalation allowed")
            if ctx.get("readOnlyRootFilesystem") is not True:
                bad.append(f"{name}: writable root filesystem")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                bad.append(f"{name}: capabilities not dropped")
            if name in mine and ctx.get("runAsUser") != 10001:
                bad.append(f"{name}: not the image's user 10001")
    return bad


def configmap_secret_problems(objs: list[Obj]) -> list[str]:
    bad = []
    for o in objs:
        if o["kind"] != "ConfigMap":
            continue
        for key, value in o.get("data", {}).items():
            if SECRET_NAME.search(key) or SECRET_VALUE.search(str(value)):
                bad.append(f"ConfigMap {o['metadata']['name']}: {key} looks secret")
    for w in workloads(objs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for var in c.get("env", []):
                if "value" in var and (
                    SECRET_NAME.search(var["name"]) or SECRET_VALUE.search(var["value"])
                ):
                    bad.append(f"{w['metadata']['name']}: {var['name']} is a literal")
    return bad


def from_secret(c: Obj, var: str) -> str | None:
    """The Secret a variable comes from (secretKeyRef, or envFrom secretRef), else None."""
    for item in c.get("env", []):
        if item["name"] == var:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            return ref["name"] if ref and ref.get("key") == var else None
    for source in c.get("envFrom", []):
        if "secretRef" in source:
            return str(source["secretRef"]["name"])
    return None


def test_base_and_overlay_render(base, overlay):
    assert set(ours(base)) == set(SPECS)
    assert set(ours(overlay)) == set(SPECS)


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_workload_has_grpc_probes_on_the_whole_server(which, request):
    assert probe_problems(request.getfixturevalue(which)) == []


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_container_has_requests_and_limits(which, request):
    assert resource_problems(request.getfixturevalue(which)) == []


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_container_runs_as_non_root_read_only_without_escalation(which, request):
    assert security_problems(request.getfixturevalue(which)) == []


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_no_secret_in_a_configmap_or_a_literal(which, request):
    assert configmap_secret_problems(request.getfixturevalue(which)) == []


def test_each_service_listens_on_every_interface_on_its_fixed_ports(base):
    for name, w in ours(base).items():
        spec: ServiceSpec = SPECS[name]
        c = container(w)
        env = environment(base, c)
        assert c["command"] == ["python", "-m", spec.module], name
        assert env[spec.addr_var] == f"0.0.0.0:{spec.default_port}", name
        assert port(c, "grpc") == spec.default_port, name
        metrics = env[f"IMAGEGATE_{env_key(name)}_METRICS_ADDR"]
        default = DEFAULT_METRICS_ADDRS[env_key(name).lower()]
        assert metrics == "0.0.0.0:" + default.rsplit(":", 1)[1], name
        assert port(c, "metrics") == int(default.rsplit(":", 1)[1]), name
        service = find(base, "Service", name)
        assert service["spec"]["selector"] == w["spec"]["selector"]["matchLabels"], name
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert ports["grpc"] == (spec.default_port, "grpc"), name


def test_router_dials_every_adapter_and_the_ledgers_by_service_name(base):
    env = environment(base, container(ours(base)["router"]))
    assert env["IMAGEGATE_QUOTA_ADDR"] == "quota:50052"
    assert env["IMAGEGATE_METERING_ADDR"] == "metering:50053"
    assert env["IMAGEGATE_ENHANCER_ADDR"] == "enhancer:50070"
    adapters = dict(item.split("=", 1) for item in str(env["IMAGEGATE_ROUTER_ADAPTERS"]).split(","))
    local = SPECS["local"]
    assert adapters == {
        s.name: f"{s.name}:{s.default_port}" for s in (local, *ADAPTERS, *SELF_HOSTED)
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]


def test_router_survives_a_lost_replica(base):
    router = ours(base)["router"]
    labels = router["spec"]["selector"]["matchLabels"]
    assert router["spec"]["replicas"] >= 2
    pdb = find(base, "PodDisruptionBudget", "router")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb["spec"]
    hpa = find(base, "HorizontalPodAutoscaler", "router")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (router["kind"], "router")
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_router_keeps_its_outbox_on_its_own_volume_and_mounts_the_shared_results(base):
    router = ours(base)["router"]
    c = container(router)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    env = environment(base, c)
    # The outbox lives in IMAGEGATE_DATA_DIR: a claim per replica, found again after a restart.
    assert env["IMAGEGATE_DATA_DIR"] == "/data"
    claims = {t["metadata"]["name"]: t for t in router["spec"].get("volumeClaimTemplates", [])}
    assert mounts["/data"] in claims
    # One ReadWriteMany claim shared by every replica at IMAGEGATE_ROUTER_RESULTS.
    assert env["IMAGEGATE_ROUTER_RESULTS"] == "/results"
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    claim = find(
        base,
        "PersistentVolumeClaim",
        volumes[mounts["/results"]]["persistentVolumeClaim"]["claimName"],
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_writable_path_is_a_volume(base):
    for name, w in ours(base).items():
        mounts = {m["mountPath"] for m in container(w).get("volumeMounts", [])}
        assert "/tmp" in mounts, name
        if name in ("router", "quota", "metering"):
            assert "/data" in mounts, name


def test_provider_keys_and_quota_secrets_come_from_a_secret(base, overlay):
    for objs in (base, overlay):
        mine = ours(objs)
        for spec in ADAPTERS:
            assert from_secret(container(mine[spec.name]), spec.key_var) == "imagegate-secrets"
        for var in TEXT_KEY_VARS:
            assert from_secret(container(mine["enhancer"]), var) == "imagegate-secrets"
        for var in OTHER_SECRETS:
            assert from_secret(container(mine["quota"]), var) == "imagegate-secrets"
        # Nothing generates a Secret: its values are never in git.
        assert [o for o in objs if o["kind"] == "Secret"] == []


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_workload_mounts_its_own_certificate_from_a_secret(which, request):
    objs = request.getfixturevalue(which)
    for name, w in ours(objs).items():
        c = container(w)
        env = environment(objs, c)
        tls_dir = env["IMAGEGATE_TLS_DIR"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[tls_dir].get("readOnly") is True, name
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mounts[tls_dir]["name"]]["secret"]
        assert secret["secretName"] == f"imagegate-tls-{name}", name
        # Readable by the pod's group only (fsGroup 10001), never world-readable.
        assert secret["defaultMode"] & 0o007 == 0, name
        assert int(str(env["IMAGEGATE_HEALTH_PORT"])) == port(c, "health"), name
        assert "IMAGEGATE_ALLOW_PLAINTEXT" not in env, name


def test_router_shows_provider_detail_to_the_admin_token_from_the_secret(base):
    assert from_secret(container(ours(base)["router"]), "IMAGEGATE_ADMIN_TOKEN") == (
        "imagegate-secrets"
    )


def test_base_runs_on_the_embedded_databases(base):
    mine = ours(base)
    for name in ("quota", "metering"):
        env = environment(base, container(mine[name]))
        assert f"{name.upper()}_DATABASE_URL" not in env
        assert mine[name]["spec"]["replicas"] == 1  # one SQLite writer
        assert mine[name]["spec"]["strategy"]["type"] == "Recreate"
        find(base, "PersistentVolumeClaim", f"{name}-data")


def test_overlay_sets_the_postgresql_urls_from_a_secret(overlay):
    mine = ours(overlay)
    for name in ("quota", "metering"):
        var = f"{name.upper()}_DATABASE_URL"
        assert from_secret(container(mine[name]), var) == "imagegate-postgres", name
        assert mine[name]["spec"]["replicas"] >= 2, name
        assert not [o for o in overlay if o["metadata"]["name"] == f"{name}-data"], name
    postgres = find(overlay, "StatefulSet", "postgres")
    assert from_secret(container(postgres), "POSTGRES_PASSWORD") == "imagegate-postgres"
    find(overlay, "Service", "postgres")


def test_the_image_is_overridable_with_kustomize_images(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(POSTGRES, tmp_path)],
                "images": [
                    {
                        "name": "imagegate",
                        "newName": "registry.example.com/imagegate",
                        "newTag": "1.2.3",
                    }
                ],
            }
        )
    )
    mine = ours(render(tmp_path))
    assert set(mine) == set(SPECS)
    assert {container(w)["image"] for w in mine.values()} == {
        "registry.example.com/imagegate:1.2.3"
    }


def _broken_copy(tmp_path: Path, path: str, old: str, new: str) -> list[Obj]:
    """Renders the base after one textual edit in a copy of deploy/kubernetes."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    target = copy / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    return render(copy / "base")


def test_the_checks_catch_a_missing_probe(tmp_path):
    broken = _broken_copy(tmp_path, "base/router.yaml", "livenessProbe:", "livenessProbeGone:")
    assert probe_problems(broken) == ["router: no grpc livenessProbe"]


def test_the_checks_catch_a_provider_probe_a_missing_limit_and_root(tmp_path):
    broken = _broken_copy(
        tmp_path, "base/adapters/fal.yaml", 'service: ""', 'service: "provider.fal"'
    )
    assert probe_problems(broken) == ["fal: startupProbe asks for service 'provider.fal'"]
    broken = _broken_copy(tmp_path / "b", "base/quota.yaml", "memory: 512Mi", "ephemeral: 1Gi")
    assert resource_problems(broken) == ["quota/quota: no limits.memory"]
    broken = _broken_copy(
        tmp_path / "c", "base/metering.yaml", "runAsNonRoot: true", "runAsNonRoot: false"
    )
    assert security_problems(broken) == ["metering: may run as root"]


def test_the_checks_catch_a_secret_in_a_configmap(tmp_path):
    broken = _broken_copy(
        tmp_path,
        "base/config/fal.env",
        "IMAGEGATE_FAL_BASE_URL=",
        "FAL_KEY=abc\nIMAGEGATE_FAL_BASE_URL=",
    )
    assert configmap_secret_problems(broken) == [
        f"ConfigMap {n}: FAL_KEY looks secret"
        for n in [
            o["metadata"]["name"]
            for o in broken
            if o["metadata"]["name"].startswith("imagegate-fal-")
        ]
    ]


def test_self_hosted_adapters_are_off_until_configured_and_take_no_secret_in_clear(base):
    mine = ours(base)
    for spec in SELF_HOSTED:
        env = environment(base, container(mine[spec.name]))
        # The variable that turns it on is a setting (a path, a URL), empty in the base.
        assert env[spec.key_var] == "", spec.name
    comfy = container(mine["comfyui"])
    assert from_secret(comfy, "IMAGEGATE_COMFYUI_TOKEN") == "imagegate-secrets"


def test_gpu_overlay_runs_diffusers_on_a_gpu_with_read_only_weights():
    objs = render(GPU)
    assert probe_problems(objs) == [] and security_problems(objs) == []
    assert resource_problems(objs) == [] and configmap_secret_problems(objs) == []
    diffusers = ours(objs)["diffusers"]
    c = container(diffusers)
    env = environment(objs, c)
    assert env["IMAGEGATE_DIFFUSERS_MODEL_PATH"] == "/models/stable-diffusion-2-1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in diffusers["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    find(objs, "PersistentVolumeClaim", claim["claimName"])
    assert c["image"].startswith("imagegate-diffusers")
