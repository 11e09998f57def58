"""Offline validation of the Helm chart in helm/herd.

Helm itself comes from the `helm-python-sdk` wheel (module `helm_python`): Helm v4's Go SDK compiled into a shared
library that ships inside the wheel, so rendering, linting and values.schema.json checks run without a helm binary,
a cluster or a network. Every rendered manifest is then checked with `kubernetes-validate --strict` (its JSON
schemas of the Kubernetes API are bundled in the wheel), at the oldest Kubernetes the chart supports (Chart.yaml's
kubeVersion) and at the newest that kubernetes-validate knows. KEDA's kinds (ScaledObject, TriggerAuthentication)
are custom resources that kubernetes-validate has no schema for: they are checked against KEDA_SCHEMAS below,
written from KEDA's v1alpha1 CRDs (strict: unknown fields are errors) plus the rules of KEDA's `redis` scaler.

The chart's own scripts (the workers' heartbeat probe and the model-fetch initContainer) are run, as rendered,
against the test Redis and a local HTTP server.

Value sets: the defaults, helm/herd/ci/full-values.yaml (every option on, bundled Redis) and
helm/herd/ci/external-redis-values.yaml (external Redis, existing Secrets and claim). A missing tool is a failure,
not a skip.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import helm_python
import jsonschema
import kubernetes_validate.utils as kv
import pytest
import redis
import yaml
from herd import channels
from herd.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "herd"
VALUE_FILES = {
    "full": CHART / "ci" / "full-values.yaml",
    "external-redis": CHART / "ci" / "external-redis-values.yaml",
}
RELEASE, NAMESPACE = "herd", "llm"
# The newest Kubernetes the installed kubernetes-validate bundles schemas for (checked in test_tool_versions).
NEWEST_KUBE = "1.37.0"
KEDA_API = "keda.sh/v1alpha1"
MONITORING_API = "monitoring.coreos.com/v1"
# Custom resources kubernetes-validate has no schema for: checked against CUSTOM_SCHEMAS below instead.
CUSTOM_APIS = (KEDA_API, MONITORING_API)
CUSTOM_TEMPLATES = ("/worker-scaledobject.yaml", "/servicemonitor.yaml")

Manifest = dict[str, Any]


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def chart_min_kube() -> str:
    """The lowest Kubernetes version Chart.yaml's kubeVersion (">=X.Y.Z-0") admits."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", constraint)
    assert match, f"Chart.yaml kubeVersion {constraint!r} is not of the form '>=X.Y.Z-0'"
    return match.group(1)


KUBE_VERSIONS = (chart_min_kube(), NEWEST_KUBE)


def load_values(name: str) -> dict[str, Any] | None:
    if name == "default":
        return None
    values: dict[str, Any] = yaml.safe_load(VALUE_FILES[name].read_text())
    return values


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (lookup() finds nothing offline)."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a YAML document that is not an object"
                docs.append(doc)
    return docs


@functools.cache
def rendered_set(name: str) -> tuple[dict[str, str], list[Manifest]]:
    rendered = render(load_values(name))
    return rendered, manifests(rendered)


def by_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest, name: str) -> dict[str, Any]:
    for c in pod_spec(workload)["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"{workload['metadata']['name']} has no container {name!r}")


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env vars in container {c['name']}: {names}"
    return {e["name"]: e for e in c.get("env", [])}


def env_value(c: dict[str, Any], name: str) -> str:
    value = env_of(c)[name]["value"]
    assert isinstance(value, str), f"{name} must be a string, got {value!r}"
    return value


def scripts() -> dict[str, str]:
    _, docs = rendered_set("default")
    data: dict[str, str] = by_kind(docs, "ConfigMap")[f"{RELEASE}-scripts"]["data"]
    return data


# --------------------------------------------------------------------------------------------------------------
# the tools themselves
# --------------------------------------------------------------------------------------------------------------


def test_tool_versions() -> None:
    """Helm v4 from the wheel, and kubernetes-validate with schemas for both Kubernetes versions we check."""
    assert helm_python.helm_sdk_version().startswith("v4."), helm_python.helm_sdk_version()
    known = set(kv.all_versions())
    for version in KUBE_VERSIONS:
        assert version in known, f"kubernetes-validate {kv.__version__} has no schemas for {version}: {sorted(known)}"


# --------------------------------------------------------------------------------------------------------------
# helm lint --strict and values.schema.json
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["default", *VALUE_FILES])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_helm_lint_strict(values_name: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART, load_values(values_name), strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    # severity: 1 info ("icon is recommended" is the only one allowed), 2 warning, 3 error
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize(
    ("bad_values", "expected"),
    [
        ({"api": {"replicas": "many"}}, "/api/replicas"),
        (
            {"workers": [{"name": "w", "model": {"name": "m", "file": "m.gguf"}, "replicas": "many"}]},
            "/workers/0/replicas",
        ),
        ({"workers": [{"name": "Not_A_DNS_Label", "model": {"name": "smollm2:135m"}}]}, "/workers/0/name"),
        ({"config": {"maxSeqs": 0}}, "/config/maxSeqs"),
        ({"redis": {"auth": {"password": "has@and/in:it"}}}, "/redis/auth/password"),
        ({"api": {"replica": 3}}, "replica"),  # a misspelt key is an error, not silently ignored
        # HERD_SPECULATE that herd would refuse at start (parse_speculation): caught at install instead
        ({"config": {"speculate": "llama3.1:8b=draft"}}, "/config/speculate"),
        (
            {"workers": [{"name": "w", "model": {"name": "smollm2:135m"}, "config": {"cpuRepack": "yes"}}]},
            "/workers/0/config/cpuRepack",
        ),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        (
            {"workerDefaults": {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}}},
            "unhealthyPodEvictionPolicy",
        ),
    ],
    ids=[
        "replicas-many",
        "worker-replicas-many",
        "worker-name",
        "max-seqs-zero",
        "password-chars",
        "unknown-key",
        "speculate-draft-without-path",
        "worker-cpu-repack",
        "image-digest",
        "pdb-policy",
    ],
)
def test_values_violating_the_schema_make_helm_fail(bad_values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(bad_values)
    assert expected in str(raised.value), raised.value
    report = helm_python.lint(CHART, bad_values, strict=True, namespace=NAMESPACE)
    assert report["errors"], "helm lint accepted values that violate values.schema.json"
    assert any(expected in error for error in report["errors"]), report["errors"]


@pytest.mark.parametrize(
    ("bad_values", "expected"),
    [
        ({"redis": {"enabled": False}}, "externalRedis.url or externalRedis.existingSecret"),
        ({"workers": [{"name": "big", "model": {"name": "llama3.1:8b"}}]}, "needs model.file"),
        (
            {
                "workers": [
                    {"name": "a", "model": {"name": "smollm2:135m"}},
                    {"name": "a", "model": {"name": "smollm2:135m"}},
                ]
            },
            "used twice",
        ),
        (
            {
                "redis": {"enabled": False},
                "externalRedis": {"url": "redis://r:6379/0"},
                "workers": [{"name": "a", "model": {"name": "smollm2:135m"}, "autoscaling": {"enabled": True}}],
            },
            "needs keda.address",
        ),
        ({"files": {"persistence": {"enabled": False}}}, "with more than one API pod"),
        ({"api": {"terminationGracePeriodSeconds": 9, "preStopDelaySeconds": 5}}, "leaves no time to drain"),
        ({"redis": {"resources": {"limits": {"memory": "1.5Gi"}}}}, "redis.resources.limits.memory"),
    ],
    ids=[
        "no-redis",
        "model-without-file",
        "duplicate-group",
        "keda-without-address",
        "files-per-pod-with-replicas",
        "grace-without-drain",
        "redis-limit-unparsed",
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(bad_values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(expected)):
        render(bad_values)


def value_paths(values: dict[str, Any], node: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the chart's values, guided by values.schema.json: descends into the chart's own objects
    (schema nodes with `properties`), not into Kubernetes objects passed through (resources, affinity, ...)."""
    paths: set[str] = set()
    for key, value in values.items():
        assert key in node["properties"], f"{prefix}{key} is not declared in values.schema.json"
        child = node["properties"][key]
        paths.add(f"{prefix}{key}")
        if isinstance(value, dict) and "properties" in child:
            paths |= value_paths(value, child, f"{prefix}{key}.")
    return paths


def test_every_value_is_in_the_schema_documented_and_exercised() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    worker_schema = schema["properties"]["workers"]["items"]
    worker_fields = {
        path
        for key, node in worker_schema["properties"].items()
        for path in [key, *(f"{key}.{sub}" for sub in node.get("properties", {}))]
    }
    default_paths = value_paths(defaults, schema)

    readme = (CHART / "README.md").read_text()
    documented = default_paths | {f"workers[].{f}" for f in worker_fields}
    missing = sorted(p for p in documented if f"`{p}`" not in readme)
    assert not missing, f"values not documented in helm/herd/README.md: {missing}"

    exercised: set[str] = set()
    used_worker_fields: set[str] = set()
    for name in VALUE_FILES:
        values = load_values(name)
        assert values is not None
        exercised |= value_paths(values, schema)
        for worker in values.get("workers", []):
            used_worker_fields |= value_paths(worker, worker_schema)
    assert not sorted(default_paths - exercised), "values.yaml keys that no CI values file sets"
    assert not sorted(worker_fields - used_worker_fields), "worker group fields that no CI values file sets"


# --------------------------------------------------------------------------------------------------------------
# kubernetes-validate --strict on every rendered manifest
# --------------------------------------------------------------------------------------------------------------

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": _STR_MAP, "annotations": _STR_MAP},
}
# The parameters of KEDA's `redis` scaler (pkg/scalers/redis_scaler.go) that may appear in trigger metadata.
_REDIS_SCALER_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["listName", "listLength"],
    "properties": {
        **{
            key: {"type": "string"}
            for key in (
                "address",
                "host",
                "port",
                "addressFromEnv",
                "hostFromEnv",
                "portFromEnv",
                "usernameFromEnv",
                "passwordFromEnv",
                "listName",
            )
        },
        "listLength": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "activationListLength": {"type": "string", "pattern": "^[0-9]+$"},
        "databaseIndex": {"type": "string", "pattern": "^[0-9]+$"},
        "enableTLS": {"type": "string", "enum": ["true", "false"]},
        "unsafeSsl": {"type": "string", "enum": ["true", "false"]},
    },
}
# The parameters of KEDA's `redis-sentinel` scaler (the same scaler code) that may appear in trigger metadata.
_REDIS_SENTINEL_SCALER_METADATA = {
    **_REDIS_SCALER_METADATA,
    "required": ["listName", "listLength", "addresses", "sentinelMaster"],
    "properties": {
        **{
            key: {"type": "string"}
            for key in ("hosts", "ports", "addressesFromEnv", "sentinelMasterFromEnv", "usernameFromEnv")
        },
        **{
            key: value
            for key, value in _REDIS_SCALER_METADATA["properties"].items()  # type: ignore[attr-defined]
            if key not in ("address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv")
        },
        "addresses": {"type": "string", "pattern": "^[^,\\s]+:[0-9]+(,[^,\\s]+:[0-9]+)*$"},
        "sentinelMaster": {"type": "string", "minLength": 1},
    },
}
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    # keda.sh_scaledobjects.yaml (v1alpha1), the fields of .spec; `status` is never set by a chart.
    "ScaledObject": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": KEDA_API},
            "kind": {"const": "ScaledObject"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string", "minLength": 1},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "advanced": {"type": "object"},
                    "fallback": {
                        "type": "object",
                        "required": ["failureThreshold", "replicas"],
                        "properties": {
                            "failureThreshold": {"type": "integer", "minimum": 0},
                            "replicas": {"type": "integer", "minimum": 0},
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string", "minLength": 1},
                                "name": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                                "metadata": _STR_MAP,
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string", "minLength": 1},
                                        "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                    },
                                },
                            },
                            # the redis scalers' own parameters
                            "allOf": [
                                {
                                    "if": {"properties": {"type": {"const": "redis"}}},
                                    "then": {"properties": {"metadata": _REDIS_SCALER_METADATA}},
                                },
                                {
                                    "if": {"properties": {"type": {"const": "redis-sentinel"}}},
                                    "then": {"properties": {"metadata": _REDIS_SENTINEL_SCALER_METADATA}},
                                },
                            ],
                        },
                    },
                },
            },
        },
    },
    # keda.sh_triggerauthentications.yaml (v1alpha1): only secretTargetRef is used by the chart.
    "TriggerAuthentication": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": KEDA_API},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                "parameter": {"type": "string", "minLength": 1},
                                "name": {"type": "string", "minLength": 1},
                                "key": {"type": "string", "minLength": 1},
                            },
                        },
                    },
                },
            },
        },
    },
}


# monitoring.coreos.com_servicemonitors.yaml (v1): the fields of .spec the chart sets, strict.
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}},
}
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": MONITORING_API},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {**_META, "properties": {**_META["properties"], "namespace": {"type": "string"}}},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STR_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY},
                            },
                        },
                    },
                },
            },
        },
    },
}
CUSTOM_SCHEMAS = {**KEDA_SCHEMAS, "ServiceMonitor": SERVICE_MONITOR_SCHEMA}


def validate_manifest(doc: Manifest, kube_version: str) -> None:
    """kubernetes-validate --strict for Kubernetes kinds; CUSTOM_SCHEMAS for KEDA's and the Prometheus Operator's
    (no schema is a failure)."""
    if doc["apiVersion"] in CUSTOM_APIS:
        jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[doc["kind"]]).validate(doc)
        if doc["kind"] == "ScaledObject":
            spec = doc["spec"]  # the CRD's CEL rule
            assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
        return
    try:
        kv.validate(doc, kube_version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {kube_version}: {where}: {exc}")
    except kv.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


@pytest.mark.parametrize("values_name", ["default", *VALUE_FILES])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(values_name: str, kube_version: str) -> None:
    _, docs = rendered_set(values_name)
    assert docs
    for doc in docs:
        validate_manifest(doc, kube_version)


def test_kubernetes_validate_cli_strict(tmp_path: Path) -> None:
    """The same check through the `kubernetes-validate --strict` command line, on the rendered files as Helm wrote
    them. Left out: NOTES.txt (not a manifest) and the templates of custom resources (KEDA's, the Prometheus
    Operator's): kubernetes-validate has no schema for them (it would only WARN), CUSTOM_SCHEMAS checks them above."""
    files: list[str] = []
    for name in ["default", *VALUE_FILES]:
        rendered, _ = rendered_set(name)
        for path, text in sorted(rendered.items()):
            if path.endswith(("NOTES.txt", *CUSTOM_TEMPLATES)) or not text.strip():
                continue
            out = tmp_path / name / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            files.append(str(out))
    assert len(files) >= 20
    cli = Path(sys.executable).with_name("kubernetes-validate")
    assert cli.is_file(), f"missing {cli}: install the test extra"
    versions = [arg for v in KUBE_VERSIONS for arg in ("-k", v)]
    result = subprocess.run(
        [str(cli), "--strict", *versions, *files], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # every document passed at both versions; a WARN (no schema for a kind) would be a manifest left unchecked
    assert lines and all(line.startswith("INFO ") and " passed for resource " in line for line in lines), result.stdout
    documents = sum(len(rendered_set(n)[1]) for n in ["default", *VALUE_FILES])
    custom_documents = sum(
        1 for n in ["default", *VALUE_FILES] for d in rendered_set(n)[1] if d["apiVersion"] in CUSTOM_APIS
    )
    assert len(lines) == (documents - custom_documents) * len(KUBE_VERSIONS)


def test_the_validators_reject_broken_manifests() -> None:
    """Negative controls: an unknown field and a wrong type are caught, by both validators."""
    _, docs = rendered_set("full")
    deployment = json.loads(json.dumps(by_kind(docs, "Deployment")["prod-herd-api"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, NEWEST_KUBE, strict=True)
    scaled = json.loads(json.dumps(by_kind(docs, "ScaledObject")["prod-herd-worker-llama-gpu"]))
    scaled["spec"]["triggers"][0]["metadata"]["listLenght"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled, NEWEST_KUBE)
    scaled = json.loads(json.dumps(by_kind(docs, "ScaledObject")["prod-herd-worker-llama-gpu"]))
    scaled["spec"]["maxReplicaCount"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled, NEWEST_KUBE)


# --------------------------------------------------------------------------------------------------------------
# what the manifests say
# --------------------------------------------------------------------------------------------------------------


def test_defaults_deploy_api_one_bundled_worker_and_redis() -> None:
    rendered, docs = rendered_set("default")
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "herd-scripts"),
        ("Deployment", "herd-api"),
        ("Deployment", "herd-worker-smollm2"),
        ("PersistentVolumeClaim", "herd-files"),
        ("PodDisruptionBudget", "herd-worker-smollm2"),
        ("Secret", "herd"),
        ("Service", "herd"),
        ("Service", "herd-redis"),
        ("Service", "herd-redis-headless"),
        ("ServiceAccount", "herd"),
        ("StatefulSet", "herd-redis"),
    ]
    deployments = by_kind(docs, "Deployment")
    api = container(deployments["herd-api"], "api")
    assert api["command"] == ["herd", "api", "--host", "0.0.0.0", "--port", "8080"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "HERD_MODELS" not in env_of(api)  # the bundled model is the image's default

    worker_pod = pod_spec(deployments["herd-worker-smollm2"])
    worker = container(deployments["herd-worker-smollm2"], "worker")
    assert worker["command"] == ["herd", "worker", "--model", "smollm2:135m"]
    assert "HERD_MODELS" not in env_of(worker)
    assert "initContainers" not in worker_pod
    assert worker_pod["terminationGracePeriodSeconds"] == 60
    assert "ports" not in worker
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"] == ["python", "/opt/herd/scripts/worker_alive.py"]
    assert {"name": "models", "emptyDir": {}} in worker_pod["volumes"]
    # The chart's default settings are herd's own (speculation off, CPU repacking auto, ...).
    literal = {k: v["value"] for k, v in env_of(worker).items() if k.startswith("HERD_") and "value" in v}
    assert literal.pop("HERD_MODELS_DIR") == "/models"  # nothing under the read-only root: the models volume
    # Shutdown follows the pod's one value: the drain ends 5 s before the kubelet's SIGKILL (the API's after preStop).
    assert literal.pop("HERD_DRAIN_TIMEOUT_S") == str(worker_pod["terminationGracePeriodSeconds"] - 5)
    assert env_value(api, "HERD_DRAIN_TIMEOUT_S") == "20"  # 30 s grace - 5 s preStop - 5 s
    assert api["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert load_settings(literal) == load_settings({"HERD_REDIS_URL": literal["HERD_REDIS_URL"]})
    # The API writes only to declared volumes: the shared files volume (a PVC, RWX with 2 replicas) and its store.
    api_pod = pod_spec(deployments["herd-api"])
    assert env_value(api, "HERD_FILES_DIR") == "/var/lib/herd/files"
    assert env_value(api, "HERD_MODELS_DIR") == "/var/lib/herd/store"
    assert {"name": "files", "persistentVolumeClaim": {"claimName": "herd-files"}} in api_pod["volumes"]
    assert {"name": "files", "mountPath": "/var/lib/herd/files"} in api["volumeMounts"]
    assert by_kind(docs, "PersistentVolumeClaim")["herd-files"]["spec"]["accessModes"] == ["ReadWriteMany"]
    single = manifests(render({"api": {"replicas": 1}}))
    assert by_kind(single, "PersistentVolumeClaim")["herd-files"]["spec"]["accessModes"] == ["ReadWriteOnce"]

    # the Redis password: generated (lookup() finds no Secret offline), URL-safe, used through $(REDIS_PASSWORD)
    secret = by_kind(docs, "Secret")["herd"]
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    for c in (api, worker):
        env = env_of(c)
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "herd", "key": "redis-password"}
        assert list(env).index("REDIS_PASSWORD") < list(env).index("HERD_REDIS_URL")  # $(VAR) needs the order
        assert env_value(c, "HERD_REDIS_URL") == "redis://:$(REDIS_PASSWORD)@herd-redis:6379/0"
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert "prometheus.io/scrape" not in deployments["herd-api"]["spec"]["template"]["metadata"].get("annotations", {})
    assert "NOTES.txt" in " ".join(rendered)


def test_redis_is_append_only_with_a_password() -> None:
    _, docs = rendered_set("default")
    sts = by_kind(docs, "StatefulSet")["herd-redis"]
    redis_c = container(sts, "redis")
    args = redis_c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--dir") + 1] == "/data"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert sts["spec"]["serviceName"] == "herd-redis-headless"
    assert by_kind(docs, "Service")["herd-redis-headless"]["spec"]["clusterIP"] == "None"
    assert env_of(redis_c)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "herd"


def test_pods_run_as_the_dockerfile_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    uids = set(re.findall(r"useradd .*--uid (\d+)", dockerfile))
    assert uids == {"10001"}, f"the Dockerfile's herd uid changed: {uids}"
    for name in ["default", *VALUE_FILES]:
        _, docs = rendered_set(name)
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            spec = pod_spec(d)
            assert spec["securityContext"]["runAsUser"] == 10001
            assert spec["securityContext"]["runAsNonRoot"] is True
            for c in spec["containers"] + spec.get("initContainers", []):
                ctx = c["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
                assert ctx["capabilities"]["drop"] == ["ALL"]
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
                assert c["resources"]["requests"], f"{c['name']} has no resource requests"


def test_env_names_are_settings_herd_reads() -> None:
    """Every HERD_* variable the chart sets is one shared/config.py reads (catches drift when settings change)."""
    known = {f"HERD_{field.upper()}" for field in Settings.__struct_fields__} | {"HERD_N_CTX", "HERD_N_GPU_LAYERS"}
    known.add(channels.PREFIX_ENV)  # read by herd.channels itself, at import
    for name in ["default", *VALUE_FILES]:
        _, docs = rendered_set(name)
        for d in docs:
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            for c in pod_spec(d)["containers"]:
                unknown = {e for e in env_of(c) if e.startswith("HERD_")} - known
                assert not unknown, f"{d['metadata']['name']}/{c['name']} sets unknown settings {unknown}"


def test_full_values_wire_every_option() -> None:
    _, docs = rendered_set("full")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        "prod-herd-api",
        "prod-herd-worker-smollm2",
        "prod-herd-worker-llama-gpu",
        "prod-herd-worker-qwen",
    }
    api_d = deployments["prod-herd-api"]
    api = container(api_d, "api")
    assert "replicas" not in api_d["spec"]  # the HPA owns it
    assert env_value(api, "HERD_MODELS") == (
        "llama3.1:8b=/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf,qwen2.5:0.5b=/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    )
    assert env_value(api, "OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability:4318"
    assert env_value(api, "HERD_QUEUE_WAIT_TIMEOUT_S") == "120.5"
    assert env_value(api, "HERD_HEARTBEAT_INTERVAL_S") == "0.5"
    assert env_value(api, "HERD_REDIS_URL") == "redis://:$(REDIS_PASSWORD)@prod-herd-redis:6380/0"
    annotations = api_d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"
    assert {"name": "auth", "mountPath": "/etc/herd/auth", "readOnly": True} in api["volumeMounts"]
    auth_secret = by_kind(docs, "Secret")["prod-herd-auth"]
    assert "sk-herd-example" in base64.b64decode(auth_secret["data"]["api-keys"]).decode()
    assert base64.b64decode(by_kind(docs, "Secret")["prod-herd"]["data"]["redis-password"]) == b"s3cret-Pass.word~1"

    hpa = by_kind(docs, "HorizontalPodAutoscaler")["prod-herd-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-herd-api"
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert by_kind(docs, "PodDisruptionBudget")["prod-herd-api"]["spec"]["minAvailable"] == 2
    ingress = by_kind(docs, "Ingress")["prod-herd"]
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"prod-herd"}
    service = by_kind(docs, "Service")["prod-herd"]
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["ports"][0]["port"] == 80

    gpu_d = deployments["prod-herd-worker-llama-gpu"]
    gpu_pod = pod_spec(gpu_d)
    gpu = container(gpu_d, "worker")
    assert "replicas" not in gpu_d["spec"]  # KEDA owns it
    assert gpu["image"] == "registry.example.com/herd:0.1.0-cuda"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_value(gpu, "HERD_N_GPU_LAYERS") == "999"
    assert env_value(gpu, "HERD_MAX_SEQS") == "32"
    assert env_value(gpu, "HERD_LOG_LEVEL") == "debug"  # the global config still applies
    assert env_value(gpu, "HERD_MODELS") == "llama3.1:8b=/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    # The GPU settings reach herd as the worker's model configuration, read the way the worker reads them.
    literal = {k: v["value"] for k, v in env_of(gpu).items() if k.startswith("HERD_") and "value" in v}
    (model,) = load_settings(literal).models
    assert (model.n_gpu_layers, model.main_gpu, model.flash_attn) == (999, 1, True)
    assert (model.tensor_split, model.type_k, model.type_v, model.n_ctx) == ((3.0, 1.0), "q8_0", "q8_0", 8192)
    # speculation with a draft model; the group's specMin 0 wins over the global 2
    assert (model.speculate, model.spec_k, model.spec_min, model.cpu_repack) == ("draft", 12, 0, "auto")
    assert env_value(gpu, "HERD_SPEC_MIN") == "0"
    # the worker opens the draft file itself: it must be on the models volume its container mounts
    assert model.draft_path == "/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    assert any(model.draft_path.startswith(f"{m['mountPath']}/") for m in gpu["volumeMounts"] if m["name"] == "models")
    # a group without its own: the global settings, its model named in the global HERD_SPECULATE
    qwen = container(deployments["prod-herd-worker-qwen"], "worker")
    literal = {k: v["value"] for k, v in env_of(qwen).items() if k.startswith("HERD_") and "value" in v}
    (model,) = load_settings(literal).models
    assert (model.name, model.speculate, model.draft_path) == ("qwen2.5:0.5b", "lookup", "")
    assert (model.spec_k, model.spec_min, model.cpu_repack) == (6, 2, "off")
    # the API gets the global HERD_SPECULATE too, and must be able to start with it
    literal = {k: v["value"] for k, v in env_of(api).items() if k.startswith("HERD_") and "value" in v}
    assert {m.name: m.speculate for m in load_settings(literal).models} == {
        "llama3.1:8b": "lookup",
        "qwen2.5:0.5b": "lookup",
    }
    assert gpu_pod["terminationGracePeriodSeconds"] == 120
    assert gpu_pod["runtimeClassName"] == "nvidia"
    assert gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (fetch,) = gpu_pod["initContainers"]
    assert fetch["command"] == ["python", "/opt/herd/scripts/fetch_model.py"]
    assert env_value(fetch, "MODEL_PATH") == "/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    assert env_of(fetch)["MODEL_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "huggingface", "key": "token"}
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]  # writable for the download
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in gpu["volumeMounts"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "prod-herd-models"}} in gpu_pod["volumes"]
    pvc = by_kind(docs, "PersistentVolumeClaim")["prod-herd-models"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "efs-sc"

    small = deployments["prod-herd-worker-smollm2"]
    assert small["spec"]["replicas"] == 2
    assert pod_spec(small)["terminationGracePeriodSeconds"] == 90
    assert env_value(container(small, "worker"), "HERD_MAX_SEQS") == "16"
    # image.digest pins the global image; a group with its own tag (the cuda build) is another image, not pinned
    digest = "sha256:4b1f0c3a9e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d"
    assert container(small, "worker")["image"] == f"registry.example.com/herd@{digest}"
    assert api["image"] == f"registry.example.com/herd@{digest}"
    assert "initContainers" not in pod_spec(deployments["prod-herd-worker-qwen"])  # no url: the file must be there


def test_grafana_dashboard_configmap_for_the_sidecar() -> None:
    """Off by default; on, the ConfigMap holds the repository's dashboard byte for byte, labelled for the sidecar."""
    assert not any(name.endswith("-dashboard") for name in by_kind(rendered_set("default")[1], "ConfigMap"))
    _, docs = rendered_set("full")
    configmap = by_kind(docs, "ConfigMap")["prod-herd-dashboard"]  # fullnameOverride: prod-herd
    assert configmap["metadata"]["namespace"] == "observability"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    shipped = configmap["data"]["herd.json"]
    assert json.loads(shipped) == json.loads((CHART / "dashboards" / "herd.json").read_text())
    assert json.loads(shipped)["uid"] == "herd-llm" and json.loads(shipped)["panels"]


def test_keda_scales_each_group_on_its_model_queue() -> None:
    _, docs = rendered_set("full")
    scaled = by_kind(docs, "ScaledObject")
    deployments = by_kind(docs, "Deployment")
    assert set(scaled) == {"prod-herd-worker-llama-gpu", "prod-herd-worker-qwen"}
    for name, so in scaled.items():
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        model = container(deployments[name], "worker")["command"][-1]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        # herd's queue key (shared/channels.py), the sorted set KEDA's redis scaler measures with ZCARD
        assert trigger["metadata"]["listName"] == f"herd:queue:{model}"
        assert trigger["metadata"]["address"] == f"prod-herd-redis.{NAMESPACE}.svc:6380"
        assert trigger["authenticationRef"] == {"name": "prod-herd-redis"}
    assert scaled["prod-herd-worker-llama-gpu"]["spec"]["triggers"][0]["metadata"]["listLength"] == "32"
    assert scaled["prod-herd-worker-qwen"]["spec"]["minReplicaCount"] == 1
    auth = by_kind(docs, "TriggerAuthentication")["prod-herd-redis"]
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "prod-herd", "key": "redis-password"}]


def test_keda_asks_the_sentinels_for_the_master_without_keda_address() -> None:
    values = load_values("external-redis")
    assert values is not None
    values["keda"] = {**values["keda"], "address": ""}  # a Sentinel set-up: no fixed address of the master
    docs = manifests(render(values))
    for doc in docs:
        validate_manifest(doc, KUBE_VERSIONS[0])
    (trigger,) = by_kind(docs, "ScaledObject")["herd-worker-tinyllama"]["spec"]["triggers"]
    assert trigger["type"] == "redis-sentinel"
    assert trigger["metadata"] == {
        "addresses": "sentinel-0.example.internal:26379,sentinel-1.example.internal:26379",
        "sentinelMaster": "herd-primary",
        "listName": "team-a.herd:queue:tinyllama:1.1b",
        "listLength": "8",
        "activationListLength": "0",
        "databaseIndex": "2",
        "enableTLS": "true",
    }
    assert trigger["authenticationRef"] == {"name": "herd-redis"}
    auth = by_kind(docs, "TriggerAuthentication")["herd-redis"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "managed-redis", "key": "password"},
        {"parameter": "sentinelPassword", "name": "managed-redis", "key": "sentinel-password"},
    ]
    # neither an address nor sentinels: the chart says what is missing
    values["externalRedis"] = {**values["externalRedis"], "sentinel": {"hosts": []}}
    with pytest.raises(helm_python.HelmRenderError, match=r"keda\.address .* or externalRedis\.sentinel\.hosts"):
        render(values)


def test_worker_groups_have_their_own_startup_probes_and_disruption_budgets() -> None:
    _, docs = rendered_set("full")
    deployments, budgets = by_kind(docs, "Deployment"), by_kind(docs, "PodDisruptionBudget")
    gpu = container(deployments["prod-herd-worker-llama-gpu"], "worker")
    qwen = container(deployments["prod-herd-worker-qwen"], "worker")
    # the big model's group waits 30 minutes for its model; the others keep workerDefaults' 15
    timing = ("periodSeconds", "timeoutSeconds", "failureThreshold")
    assert [gpu["startupProbe"][k] for k in timing] == [10, 10, 180]
    assert [qwen["startupProbe"][k] for k in timing] == [10, 5, 90]
    assert [gpu["livenessProbe"][k] for k in timing] == [20, 10, 3]
    assert [qwen["livenessProbe"][k] for k in timing] == [15, 5, 4]
    assert gpu["startupProbe"]["exec"] == qwen["startupProbe"]["exec"]

    # one budget per group that keeps it (smollm2 turned its off), selecting exactly that group's pods
    assert set(budgets) == {"prod-herd-api", "prod-herd-worker-llama-gpu", "prod-herd-worker-qwen"}
    assert budgets["prod-herd-worker-llama-gpu"]["spec"]["maxUnavailable"] == 1
    assert budgets["prod-herd-worker-llama-gpu"]["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    assert budgets["prod-herd-worker-qwen"]["spec"]["maxUnavailable"] == "25%"
    assert budgets["prod-herd-worker-qwen"]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budgets["prod-herd-api"]["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [
            d["metadata"]["name"]
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected == [name], f"PodDisruptionBudget {name} selects {selected}"
    # the defaults: every group gets one, and an unready pod never blocks a drain
    (default_budget,) = by_kind(rendered_set("default")[1], "PodDisruptionBudget").values()
    assert default_budget["spec"] | {"selector": None} == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": None,
    }


def test_keda_fallback_and_scaling_behaviour() -> None:
    _, docs = rendered_set("full")
    scaled = by_kind(docs, "ScaledObject")
    gpu, qwen = scaled["prod-herd-worker-llama-gpu"]["spec"], scaled["prod-herd-worker-qwen"]["spec"]
    assert gpu["fallback"] == {"failureThreshold": 5, "replicas": 2}
    assert qwen["fallback"] == {"failureThreshold": 5, "replicas": 1}  # the group's minReplicas
    gpu_behavior = gpu["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert gpu_behavior == {
        "scaleDown": {
            "stabilizationWindowSeconds": 900,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
        }
    }
    qwen_behavior = qwen["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert qwen_behavior["scaleUp"]["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 60}]
    assert qwen_behavior["scaleDown"]["stabilizationWindowSeconds"] == 300  # the chart's default, merged by Helm
    # the behaviour is an autoscaling/v2 HorizontalPodAutoscalerBehavior: validate it as part of a real HPA
    for behavior in (gpu_behavior, qwen_behavior):
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "check"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2, "behavior": behavior},
        }
        for version in KUBE_VERSIONS:
            validate_manifest(hpa, version)
    off = manifests(
        render(
            {
                "keda": {"fallback": {"enabled": False}},
                "workers": [{"name": "a", "model": {"name": "smollm2:135m"}, "autoscaling": {"enabled": True}}],
            }
        )
    )
    (spec,) = [so["spec"] for so in by_kind(off, "ScaledObject").values()]
    assert "fallback" not in spec and spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]


def test_service_monitor_scrapes_herds_metrics_route() -> None:
    from herd.api.routes import health

    assert health.metrics.paths == {"/metrics"}  # the path the annotations and the ServiceMonitor name
    assert not by_kind(rendered_set("default")[1], "ServiceMonitor")
    _, docs = rendered_set("full")
    monitor = by_kind(docs, "ServiceMonitor")["prod-herd"]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
        "authorization": {"type": "Bearer", "credentials": {"name": "herd-metrics-key", "key": "token"}},
    }
    # it selects the API Service (one), whose port named http reaches the API container's port
    services = [
        s
        for s in by_kind(docs, "Service").values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["prod-herd"]
    assert {p["name"] for p in services[0]["spec"]["ports"]} == {"http"}
    api = by_kind(docs, "Deployment")["prod-herd-api"]
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_network_policy_admits_only_herd_pods_and_keda() -> None:
    assert not by_kind(rendered_set("default")[1], "NetworkPolicy")
    _, docs = rendered_set("full")
    policy = by_kind(docs, "NetworkPolicy")["prod-herd-redis"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    herd_peer, keda_peer, extra = rule["from"]

    def admitted(labels: dict[str, str]) -> bool:
        selector = herd_peer["podSelector"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    workloads = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    # the policy applies to the Redis pod, and admits every herd pod of the release but Redis itself
    assert [n for n, labels in workloads.items() if policy["podSelector"]["matchLabels"].items() <= labels.items()] == [
        "prod-herd-redis"
    ]
    assert {n for n, labels in workloads.items() if admitted(labels)} == set(by_kind(docs, "Deployment"))
    # a pod of another release of the chart (same name and component labels) is not admitted
    other = dict(workloads["prod-herd-api"], **{"app.kubernetes.io/instance": "other"})
    assert not admitted(other)
    assert keda_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda-system"}},
        "podSelector": {"matchLabels": {"app": "keda-operator"}},
    }
    assert extra == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "backups"}}}
    redis_ports = {p["name"] for p in container(by_kind(docs, "StatefulSet")["prod-herd-redis"], "redis")["ports"]}
    assert "redis" in redis_ports
    # with an external Redis there is no bundled Redis to protect
    assert not by_kind(rendered_set("external-redis")[1], "NetworkPolicy")


def test_extra_volumes_env_from_and_objects() -> None:
    _, docs = rendered_set("full")
    deployments = by_kind(docs, "Deployment")
    api_pod, api = pod_spec(deployments["prod-herd-api"]), container(deployments["prod-herd-api"], "api")
    assert api["envFrom"] == [
        {"configMapRef": {"name": "prod-herd-extra-env"}},
        {"secretRef": {"name": "herd-api-env"}},
    ]
    assert {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True} in api["volumeMounts"]
    assert {"name": "scratch", "mountPath": "/scratch"} in api["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}} in api_pod["volumes"]
    gpu_pod, gpu = (
        pod_spec(deployments["prod-herd-worker-llama-gpu"]),
        container(deployments["prod-herd-worker-llama-gpu"], "worker"),
    )
    assert [s.get("configMapRef", {}).get("name") for s in gpu["envFrom"]] == ["prod-herd-extra-env", "corporate-ca"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in gpu["volumeMounts"]
    assert {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}} in gpu_pod["volumes"]
    qwen = container(deployments["prod-herd-worker-qwen"], "worker")
    assert "scratch" not in {m["name"] for m in qwen["volumeMounts"]}  # api.* stays on the API
    # extraObjects: a map and a string, both through tpl
    configmaps = by_kind(docs, "ConfigMap")
    assert configmaps["prod-herd-extra-env"]["data"] == {"LANG": "C.UTF-8"}
    assert configmaps["corporate-ca"]["metadata"]["labels"] == {"release": RELEASE}
    assert "envFrom" not in container(by_kind(rendered_set("default")[1], "Deployment")["herd-api"], "api")


def test_redis_maxmemory_below_its_limit_refuses_writes(tmp_path: Path) -> None:
    """The rendered --maxmemory is maxmemoryPercent of the memory limit; a real redis-server started with the chart's
    arguments takes it and refuses a write past it (an OOM error) instead of growing or evicting."""
    args = container(by_kind(rendered_set("default")[1], "StatefulSet")["herd-redis"], "redis")["args"]
    assert args[args.index("--maxmemory") + 1] == str(1024**3 * 80 // 100)  # 80 % of the default 1Gi
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    for limit, percent, expected in (
        ("3G", 50, 1_500_000_000),
        ("512Mi", 75, 402653184),
        ("2147483648", 90, 1932735283),
    ):
        docs = manifests(render({"redis": {"resources": {"limits": {"memory": limit}}, "maxmemoryPercent": percent}}))
        rendered = container(by_kind(docs, "StatefulSet")["herd-redis"], "redis")["args"]
        assert rendered[rendered.index("--maxmemory") + 1] == str(expected)
    unlimited = manifests(render({"redis": {"resources": {"requests": {"memory": "1Gi"}, "limits": None}}}))
    assert "--maxmemory" not in container(by_kind(unlimited, "StatefulSet")["herd-redis"], "redis")["args"]

    small = manifests(render({"redis": {"resources": {"limits": {"memory": "8Mi"}}, "maxmemoryPercent": 50}}))
    small_args = container(by_kind(small, "StatefulSet")["herd-redis"], "redis")["args"]
    start = small_args.index("--maxmemory")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    server = subprocess.Popen(
        [*command, *small_args[start : start + 4]],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                threading.Event().wait(0.05)
        assert client.config_get("maxmemory") == {"maxmemory": str(4 * 1024**2)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.ResponseError, match="used memory > 'maxmemory'"):
            for i in range(64):
                client.set(f"job:{i}", b"x" * (256 * 1024))
        assert client.exists("job:0")  # nothing was evicted to make room
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def test_queue_key_matches_herd() -> None:

    assert channels.queue("m:1") == "herd:queue:m:1"
    assert channels.WORKER_PATTERN == "herd:worker:*"


def test_external_redis() -> None:
    _, docs = rendered_set("external-redis")
    assert not by_kind(docs, "StatefulSet") and "prod-herd-redis" not in by_kind(docs, "Service")
    assert not by_kind(docs, "Secret")  # everything comes from existing Secrets
    assert not by_kind(docs, "ServiceAccount") and not by_kind(docs, "PersistentVolumeClaim")
    deployments = by_kind(docs, "Deployment")
    for d in deployments.values():
        c = container(d, d["spec"]["template"]["spec"]["containers"][0]["name"])
        assert env_of(c)["HERD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "managed-redis", "key": "url"}
        assert "REDIS_PASSWORD" not in env_of(c)
        assert pod_spec(d)["serviceAccountName"] == "herd-existing"
    worker = deployments["herd-worker-tinyllama"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared-models"}} in pod_spec(worker)["volumes"]
    api_pod = pod_spec(by_kind(docs, "Deployment")["herd-api"])
    assert {"name": "files", "persistentVolumeClaim": {"claimName": "shared-files"}} in api_pod["volumes"]
    # TLS files, ACL user, password and Sentinel reach both the API and the workers, and read back as herd reads them.
    for d in deployments.values():
        c = pod_spec(d)["containers"][0]
        env = env_of(c)
        assert env["HERD_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "managed-redis", "key": "password"}
        assert env["HERD_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "sentinel-password"
        assert {"name": "redis-tls", "secret": {"secretName": "managed-redis-tls"}} in pod_spec(d)["volumes"]
        assert {"name": "redis-tls", "mountPath": "/etc/herd/redis-tls", "readOnly": True} in c["volumeMounts"]
        literal = {k: v["value"] for k, v in env.items() if k.startswith("HERD_") and "value" in v}
        settings = load_settings({**literal, "HERD_MODELS": "m=/m.gguf"})
        assert (settings.redis_username, settings.redis_tls, settings.redis_tls_verify) == ("herd-app", True, True)
        assert settings.redis_tls_ca_file == "/etc/herd/redis-tls/ca.crt"
        assert (settings.redis_tls_cert_file, settings.redis_tls_key_file) == (
            "/etc/herd/redis-tls/tls.crt",
            "/etc/herd/redis-tls/tls.key",
        )
        assert settings.redis_sentinels == "sentinel-0.example.internal:26379,sentinel-1.example.internal:26379"
        assert settings.redis_sentinel_service == "herd-primary"
    api = deployments["herd-api"]
    assert {
        "name": "auth",
        "secret": {"secretName": "herd-api-keys", "items": [{"key": "keys.txt", "path": "keys.txt"}]},
    } in (pod_spec(api)["volumes"])
    (trigger,) = by_kind(docs, "ScaledObject")["herd-worker-tinyllama"]["spec"]["triggers"]
    # a deployment prefix names herd's keys and channels (HERD_REDIS_PREFIX) and so the queue KEDA reads
    assert trigger["metadata"]["listName"] == "team-a.herd:queue:tinyllama:1.1b"
    for d in deployments.values():
        assert env_value(pod_spec(d)["containers"][0], "HERD_REDIS_PREFIX") == "team-a.herd"
    assert trigger["metadata"] | {"listName": ""} == {
        "address": "redis.example.internal:6380",
        "listName": "",
        "listLength": "8",
        "activationListLength": "0",
        "databaseIndex": "2",
        "enableTLS": "true",
    }
    auth = by_kind(docs, "TriggerAuthentication")["herd-redis"]
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "managed-redis", "key": "password"}]

    # an inline URL goes into the chart's Secret instead
    inline = manifests(render({"redis": {"enabled": False}, "externalRedis": {"url": "rediss://:pw@r.example:6380/3"}}))
    secret = by_kind(inline, "Secret")["herd"]
    assert base64.b64decode(secret["data"]["redis-url"]) == b"rediss://:pw@r.example:6380/3"
    assert "redis-password" not in secret["data"]
    for d in by_kind(inline, "Deployment").values():
        c = pod_spec(d)["containers"][0]
        assert env_of(c)["HERD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "herd", "key": "redis-url"}


def test_references_resolve() -> None:
    """Selectors match pods; Secrets, ConfigMaps and claims referenced are rendered or named in the values."""
    for name in ["default", *VALUE_FILES]:
        values = load_values(name) or {}
        _, docs = rendered_set(name)
        external = {
            (values.get("externalRedis") or {}).get("existingSecret"),
            (values.get("auth") or {}).get("apiKeysSecret"),
            (values.get("keda") or {}).get("passwordSecret", {}).get("name"),
            (values.get("models") or {}).get("download", {}).get("tokenSecret", {}).get("name"),
            (values.get("externalRedis") or {}).get("tls", {}).get("secret"),
            (values.get("externalRedis") or {}).get("passwordSecret", {}).get("name"),
            (values.get("externalRedis") or {}).get("sentinel", {}).get("passwordSecret", {}).get("name"),
            *(s["secretRef"]["name"] for s in (values.get("api") or {}).get("envFrom", []) if "secretRef" in s),
        } - {None, ""}
        secrets = set(by_kind(docs, "Secret")) | external
        configmaps = set(by_kind(docs, "ConfigMap"))
        claims = set(by_kind(docs, "PersistentVolumeClaim")) | {
            (values.get(volume) or {}).get("persistence", {}).get("existingClaim") for volume in ("models", "files")
        }
        workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
        for d in workloads:
            spec = pod_spec(d)
            template_labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in secrets
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
            mounts = {m["name"] for c in spec["containers"] + spec.get("initContainers", []) for m in c["volumeMounts"]}
            claimed = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])}
            declared = {v["name"] for v in spec.get("volumes", [])} | claimed
            assert mounts <= declared, f"{d['metadata']['name']} mounts undeclared volumes {mounts - declared}"
            for c in spec["containers"]:
                for source in c.get("envFrom", []):
                    if "configMapRef" in source:
                        assert source["configMapRef"]["name"] in configmaps or source["configMapRef"].get("optional")
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in secrets
            for c in spec["containers"] + spec.get("initContainers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in secrets, f"{d['metadata']['name']}: unknown Secret {ref['name']}"
                        rendered_secret = by_kind(docs, "Secret").get(ref["name"])
                        if rendered_secret is not None:
                            assert ref["key"] in rendered_secret["data"]
        for service in by_kind(docs, "Service").values():
            selector = service["spec"]["selector"]
            matches = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
            (workload,) = matches
            ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
        for so in by_kind(docs, "ScaledObject").values():
            assert so["spec"]["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")
            assert so["spec"]["triggers"][0]["authenticationRef"]["name"] in by_kind(docs, "TriggerAuthentication")


# --------------------------------------------------------------------------------------------------------------
# the chart's scripts, run for real
# --------------------------------------------------------------------------------------------------------------

PROBE_DB = 15  # a Redis database no other test uses


def run_script(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(scripts()[name])
    return subprocess.run(
        [sys.executable, str(script)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_worker_probe_follows_this_hosts_heartbeat(tmp_path: Path, redis_port: int) -> None:
    """The probe finds this pod's heartbeat through the registry of live workers, as workers/bus.py writes it, and
    issues no SCAN (counted by Redis' INFO commandstats) however many other keys there are."""
    from herd import registry

    url = f"redis://127.0.0.1:{redis_port}/{PROBE_DB}"
    client = redis.Redis(host="127.0.0.1", port=redis_port, db=PROBE_DB)
    beat = client.register_script(registry.BEAT)
    heartbeat = {"worker_id": "x", "models": ["m"], "pid": 1, "heartbeat_at": 0.0}

    def scans() -> int:
        return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))

    try:
        client.flushdb()
        client.mset({f"unrelated:{i}": b"x" for i in range(500)})
        beat(
            keys=[channels.worker("other"), channels.WORKERS],
            args=["other", json.dumps({**heartbeat, "host": "some-other-pod"}), 30_000],
        )
        beat(keys=[channels.worker("garbage"), channels.WORKERS], args=["garbage", b"\x00not json", 30_000])
        # a stale heartbeat key of this host that is not in the registry (a worker of an older build) is not enough
        client.set(channels.worker("unlisted"), json.dumps({**heartbeat, "host": socket.gethostname()}), px=30_000)
        scanned = scans()
        absent = run_script(tmp_path, "worker_alive.py", {"HERD_REDIS_URL": url})
        assert absent.returncode == 1, absent.stdout + absent.stderr
        assert "no live herd worker heartbeat" in absent.stderr

        mine = json.dumps({**heartbeat, "host": socket.gethostname()})
        beat(keys=[channels.worker("mine"), channels.WORKERS], args=["mine", mine, 30_000])
        present = run_script(tmp_path, "worker_alive.py", {"HERD_REDIS_URL": url})
        assert present.returncode == 0, present.stdout + present.stderr
        assert scans() == scanned
    finally:
        client.flushdb()
        client.close()

    # Redis unreachable: the probe does not restart workers for Redis's sake
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    down = run_script(tmp_path, "worker_alive.py", {"HERD_REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"})
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Redis unreachable" in down.stderr


class _Recorder(http.server.SimpleHTTPRequestHandler):
    authorizations: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).authorizations.append(self.headers.get("Authorization"))
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_Recorder, directory=str(root))
    _Recorder.authorizations = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_fetch_model_downloads_once_and_verifies(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    base_url, root = file_server
    payload = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    (root / "m.gguf").write_bytes(payload)
    models = tmp_path / "models"
    target = models / "sub" / "m.gguf"
    env = {
        "MODEL_URL": f"{base_url}/m.gguf",
        "MODEL_PATH": str(target),
        "MODEL_SHA256": hashlib.sha256(payload).hexdigest().upper(),
        "MODEL_TOKEN": "hf_secret",
    }
    first = run_script(tmp_path, "fetch_model.py", env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert target.read_bytes() == payload
    assert _Recorder.authorizations == ["Bearer hf_secret"]

    again = run_script(tmp_path, "fetch_model.py", env)
    assert again.returncode == 0 and "present" in again.stdout
    assert len(_Recorder.authorizations) == 1  # no second download

    wrong = run_script(
        tmp_path, "fetch_model.py", {**env, "MODEL_PATH": str(models / "w.gguf"), "MODEL_SHA256": "0" * 64}
    )
    assert wrong.returncode != 0 and "sha256 mismatch" in wrong.stderr
    missing = run_script(
        tmp_path, "fetch_model.py", {**env, "MODEL_URL": f"{base_url}/nope.gguf", "MODEL_PATH": str(models / "n.gguf")}
    )
    assert missing.returncode != 0
    assert sorted(p.name for p in models.rglob("*") if p.is_file()) == ["m.gguf"]  # no partial files left
