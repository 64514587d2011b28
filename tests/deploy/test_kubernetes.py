"""deploy/k8s: every kustomization builds (with kustomize), every object is valid against its
schema (the Kubernetes JSON schemas kubernetes-validate ships, strictly; the KEDA
ScaledObject against cloudcoil's models generated from KEDA's CRD), and the manifests agree
with the services: their settings, ports, topics, consumer groups, images and databases."""

from __future__ import annotations

import base64
import subprocess
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from kubernetes_validate.utils import latest_version

from audit.entrypoints.consumer import AUDITED_TOPICS
from contracts import ORDERS_EVENTS
from devstack.infra import TOPIC_PARTITIONS
from tests.deploy.conftest import (
    ALL_TOPICS_WITH_DLQS,
    DEPLOY,
    PEER_URLS,
    SERVICES,
    SettingsFromEnv,
    check_roles,
    dockerfile,
    env_names,
    env_prefix,
    init_creates,
    load_yaml_documents,
    topics_of_script,
    url,
)

pytestmark = pytest.mark.deploy

KUSTOMIZATIONS = ("base", "overlays/local")
# The oldest Kubernetes these manifests are meant for, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29", latest_version())
NAMESPACE = "order-backbone"
# What each scaled consumer subscribes to: the notifier reads orders.events only.
CONSUMED_TOPICS = {"notifier": {ORDERS_EVENTS}, "audit": set(AUDITED_TOPICS)}
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "Job")

Object = dict[str, Any]


class Build:
    """The objects one kustomization builds."""

    def __init__(self, name: str, objects: list[Object]):
        self.name = name
        self.objects = objects

    def all(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Object:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.name} builds no {kind} {name}"
        return found[0]

    def find(self, kind: str, name: str) -> Object | None:
        return next((o for o in self.all(kind) if o["metadata"]["name"] == name), None)

    @cached_property
    def pod_templates(self) -> list[tuple[Object, Object]]:
        return [(o, o["spec"]["template"]) for kind in POD_TEMPLATE_KINDS for o in self.all(kind)]

    def service_container(self, kind: str, name: str, service: str) -> Object:
        spec = self.get(kind, name)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if image_name(c) == f"order-backbone/{service}")

    def resolve_env(self, container: Object) -> tuple[dict[str, str], set[str]]:
        """The container's environment: values known from the build, and the names of those
        that come from objects the build does not hold (Secrets the platform provides)."""
        known: dict[str, str] = {}
        unknown: set[str] = set()
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                known.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
            else:
                secret = self.find("Secret", source["secretRef"]["name"])
                assert secret, f"envFrom names Secret {source['secretRef']['name']}: keys unknown"
                known.update(decoded(secret))
        for variable in container.get("env", []):
            name = variable["name"]
            if "value" in variable:
                known[name] = variable["value"]
                continue
            ref = variable["valueFrom"].get("secretKeyRef") or variable["valueFrom"].get(
                "configMapKeyRef"
            )
            kind = "Secret" if "secretKeyRef" in variable["valueFrom"] else "ConfigMap"
            holder = self.find(kind, ref["name"])
            data = (decoded(holder) if kind == "Secret" else holder["data"]) if holder else {}
            if ref["key"] in data:
                known[name] = data[ref["key"]]
            else:
                unknown.add(name)
        return known, unknown


def decoded(secret: Object) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def image_name(container: Object) -> str:
    return str(container["image"]).split(":")[0]


def kustomize_build(kustomize: Path, kustomization: str) -> Build:
    built = subprocess.run(
        [str(kustomize), "build", str(DEPLOY / "k8s" / kustomization)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    return Build(kustomization, load_yaml_documents(built.stdout))


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def build(request: pytest.FixtureRequest, kustomize: Path) -> Build:
    return kustomize_build(kustomize, request.param)


@pytest.fixture(scope="module")
def local(kustomize: Path) -> Build:
    return kustomize_build(kustomize, "overlays/local")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_its_schema(build: Build, version: str) -> None:
    for obj in build.objects:
        where = f"{build.name}: {obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            assert obj["kind"] == "ScaledObject", where
            model = ScaledObject.model_validate(obj)
            # The models ignore fields they do not know: a field lost on the way back is one
            # KEDA's CRD does not have.
            assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj, where
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")


def test_everything_lives_in_a_namespace_that_enforces_the_restricted_pod_security(
    build: Build,
) -> None:
    namespace = build.get("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in build.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_every_pod_meets_the_restricted_pod_security_standard_and_has_resources(
    build: Build,
) -> None:
    """The namespace refuses any other pod; resources let the scheduler and KEDA plan."""
    for owner, template in build.pod_templates:
        spec = template["spec"]
        where = f"{owner['kind']} {owner['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret"}, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_runs_read_only_as_its_image_user_with_probes_on_its_port(
    build: Build, service: str, settings_from_env: SettingsFromEnv
) -> None:
    deployment = build.get("Deployment", service)
    pod = deployment["spec"]["template"]["spec"]
    container = build.service_container("Deployment", service, service)
    image_users = [i["value"] for i in dockerfile(service).structure if i["instruction"] == "USER"]
    assert str(pod["securityContext"]["runAsUser"]) == image_users[-1].split(":")[0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["serve"]

    known, _ = build.resolve_env(container)
    settings: Any = settings_from_env(service, known)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_a_service_container_gets_is_one_of_its_settings_with_a_valid_value(
    build: Build, service: str, settings_from_env: SettingsFromEnv
) -> None:
    for kind, name in (("Deployment", service), ("Job", f"{service}-migrate")):
        known, from_elsewhere = build.resolve_env(build.service_container(kind, name, service))
        unknown = sorted(n for n in from_elsewhere if n.upper() not in env_names(service))
        assert not unknown, f"{kind} {name}: the {service} settings read no {unknown}"
        settings_from_env(service, known)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_has_a_pod_disruption_budget_a_service_and_a_migration_job(
    build: Build, service: str
) -> None:
    deployment = build.get("Deployment", service)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    budget = build.get("PodDisruptionBudget", service)["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget.get("maxUnavailable") == 1

    container = build.service_container("Deployment", service, service)
    endpoint = build.get("Service", service)["spec"]
    assert endpoint["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in endpoint["ports"]} <= port_names

    migration = build.service_container("Job", f"{service}-migrate", service)
    assert migration["args"] == ["migrate"]
    assert migration["image"] == container["image"], "the same image migrates and serves"


@pytest.mark.parametrize(("service", "setting", "peer"), PEER_URLS)
def test_a_service_reaches_another_by_its_kubernetes_service(
    build: Build, settings_from_env: SettingsFromEnv, service: str, setting: str, peer: str
) -> None:
    known, _ = build.resolve_env(build.service_container("Deployment", service, service))
    settings: Any = settings_from_env(service, known)
    target = urlsplit(getattr(settings, setting))
    # A Service's short name resolves within the namespace everything is deployed to.
    assert target.hostname == peer
    ports = {p["port"]: p["targetPort"] for p in build.get("Service", peer)["spec"]["ports"]}
    assert ports.get(target.port) == "http", (target.port, ports)


def secret_refs(container: Object) -> dict[str, str]:
    """Variable name -> the Secret it comes from."""
    return {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"]
        for v in container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }


@pytest.mark.parametrize("service", SERVICES)
def test_the_migration_job_gets_the_owner_url_and_the_service_only_the_runtime_url(
    build: Build, service: str
) -> None:
    runtime_url = f"{env_prefix(service)}DATABASE_URL"
    owner_url = f"{env_prefix(service)}MIGRATION_DATABASE_URL"
    serving = secret_refs(build.service_container("Deployment", service, service))
    migrating = secret_refs(build.service_container("Job", f"{service}-migrate", service))
    assert owner_url not in serving, "only the migration gets the owner's password"
    assert runtime_url in serving
    # The runtime URL names the role the migrations grant to.
    assert migrating[runtime_url] == serving[runtime_url]
    assert migrating[owner_url] != serving[runtime_url], "the owner's URL is a Secret of its own"


def test_the_base_refers_to_secrets_without_values_and_runs_in_production_mode(
    kustomize: Path, settings_from_env: SettingsFromEnv
) -> None:
    base = kustomize_build(kustomize, "base")
    assert not base.all("Secret"), "credentials come from the overlay or the platform"
    for service in SERVICES:
        for kind, name in (("Deployment", service), ("Job", f"{service}-migrate")):
            known, _ = base.resolve_env(base.service_container(kind, name, service))
            settings: Any = settings_from_env(service, known)
            assert settings.environment == "production", f"{kind} {name}"


@pytest.mark.parametrize("service", sorted(CONSUMED_TOPICS))
def test_a_consumer_scales_on_the_lag_of_its_group_on_the_topics_it_reads(
    build: Build, service: str, settings_from_env: SettingsFromEnv
) -> None:
    scaled = build.get("ScaledObject", service)["spec"]
    assert scaled["scaleTargetRef"]["name"] == service
    assert "replicas" not in build.get("Deployment", service)["spec"], "KEDA owns the count"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= TOPIC_PARTITIONS

    known, _ = build.resolve_env(build.service_container("Deployment", service, service))
    settings: Any = settings_from_env(service, known)
    topics = set()
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        topics.add(metadata["topic"])
        # KEDA reads these variables from the scaled container: the service's own values.
        assert known[metadata["consumerGroupFromEnv"]] == settings.consumer_group
        assert known[metadata["bootstrapServersFromEnv"]] == settings.kafka_bootstrap_servers
        assert int(metadata["lagThreshold"]) > 0
    assert topics == CONSUMED_TOPICS[service]


def test_the_topic_job_creates_every_topic_and_dlq_with_the_partitions_scaling_counts_on(
    build: Build,
) -> None:
    container = build.get("Job", "kafka-topics")["spec"]["template"]["spec"]["containers"][0]
    topics, partitions = topics_of_script(container["args"][0])
    assert topics == ALL_TOPICS_WITH_DLQS
    assert partitions == {TOPIC_PARTITIONS}


def test_the_local_overlay_brings_everything_the_base_refers_to(local: Build) -> None:
    for owner, template in local.pod_templates:
        for container in template["spec"]["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    needs = f"{owner['metadata']['name']} needs {ref['name']}/{ref['key']}"
                    secret = local.find("Secret", ref["name"])
                    assert secret, needs
                    assert ref["key"] in decoded(secret), needs
    for service in SERVICES:
        image = local.service_container("Deployment", service, service)["image"]
        assert image == f"order-backbone/{service}:dev", "the images built locally"


@pytest.mark.parametrize("service", SERVICES)
def test_the_local_postgres_creates_the_roles_and_the_database_of_each_service_in_dev_mode(
    local: Build, service: str, settings_from_env: SettingsFromEnv
) -> None:
    known, _ = local.resolve_env(local.service_container("Deployment", service, service))
    serving: Any = settings_from_env(service, known)
    known, _ = local.resolve_env(local.service_container("Job", f"{service}-migrate", service))
    migrating: Any = settings_from_env(service, known)
    # The overlay's Secrets hold the published dev passwords: it must run in dev mode.
    assert serving.environment == migrating.environment == "dev"
    database, owner, runtime = check_roles(service, serving, migrating)
    host = url(serving.database_url).host
    assert host
    assert local.find("Service", host), f"no Service {host} for the database"

    roles, databases = init_creates(local_postgres_init_files(local))
    assert {owner, runtime} <= roles
    assert (database, owner, runtime) in databases


def local_postgres_init_files(local: Build) -> dict[str, str]:
    """What the local postgres's /docker-entrypoint-initdb.d holds: path in it -> text."""
    volumes = local.get("StatefulSet", "postgres")["spec"]["template"]["spec"]["volumes"]
    volume = next(v["configMap"] for v in volumes if v["name"] == "init")
    data = local.get("ConfigMap", volume["name"])["data"]
    items = volume.get("items") or [{"key": key, "path": key} for key in data]
    return {item["path"]: data[item["key"]] for item in items}


def test_the_local_postgres_init_is_the_one_compose_and_deploy_local_run() -> None:
    copies = DEPLOY / "k8s" / "overlays" / "local" / "postgres"
    originals = {
        "create-databases.sql": DEPLOY / "docker" / "postgres",
        "roles.sql": DEPLOY / "local" / "postgres",
        "database.sql": DEPLOY / "local" / "postgres",
    }
    assert {f.name for f in copies.iterdir()} == set(originals)
    for name, directory in originals.items():
        assert (copies / name).read_text() == (directory / name).read_text(), name


def test_the_local_kafka_advertises_the_address_services_and_keda_use(local: Build) -> None:
    kafka = local.get("StatefulSet", "kafka")["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v["value"] for v in kafka["env"]}
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://")
    bootstrap = local.resolve_env(local.service_container("Deployment", "notifier", "notifier"))
    assert bootstrap[0]["KAFKA_BOOTSTRAP_SERVERS"] == advertised
    host = advertised.split(":")[0]
    assert host == f"kafka.{NAMESPACE}.svc", "fully qualified: KEDA runs in its own namespace"
    assert local.find("Service", "kafka")
