"""The install manifests: kustomize base and overlays, Argo CD objects and the Grafana dashboard
parse, refer to what exists (files, chart values, metrics), and keep RBAC least-privilege.
Rendering with `kubectl kustomize` and validating on a real API server is left to e2e."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nofx.api import crdgen

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "manifests" / "kustomize"
BASE = KUSTOMIZE / "base"
ARGOCD = ROOT / "manifests" / "argocd"
DASHBOARD = ROOT / "manifests" / "grafana" / "nofx-operator-dashboard.json"
METRICS = ROOT / "operator" / "nofx" / "metrics.py"
CHART = ROOT / "charts" / "nofx"
OVERLAYS = sorted(path.name for path in (KUSTOMIZE / "overlays").iterdir() if path.is_dir())

YAML_FILES = sorted([*KUSTOMIZE.rglob("*.yaml"), *ARGOCD.rglob("*.yaml")])


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def objects(folder: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.rglob("*.yaml")) for doc in documents(path)]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_yaml_parses_into_kubernetes_objects(path: Path) -> None:
    docs = documents(path)
    assert docs, "no YAML document"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"]


@pytest.mark.parametrize(
    "kustomization",
    sorted(KUSTOMIZE.rglob("kustomization.yaml")),
    ids=lambda path: str(path.parent.relative_to(KUSTOMIZE)),
)
def test_kustomization_resources_exist(kustomization: Path) -> None:
    for entry in yaml.safe_load(kustomization.read_text())["resources"]:
        target = kustomization.parent / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), entry


def test_base_crds_are_the_generated_ones() -> None:
    names = sorted(path.name for path in (BASE / "crds").iterdir())
    assert names == sorted(crdgen.render())
    diffs = crdgen.differences(BASE / "crds")
    assert not diffs, (
        "manifests/kustomize/base/crds is out of date: run "
        "`python -m nofx.api.crdgen --out manifests/kustomize/base/crds`\n" + "".join(diffs)
    )


def test_base_rbac_grants_nothing_on_secrets_and_no_wildcards() -> None:
    roles = [doc for doc in objects(BASE) if doc["kind"] in ("ClusterRole", "Role")]
    assert [role["metadata"]["name"] for role in roles] == ["nofx"]
    for rule in roles[0]["rules"]:
        assert "secrets" not in rule["resources"], rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        if "pods" in rule["resources"]:
            assert rule["verbs"] == ["list", "watch"], "Pods are only read, for their outputs"


def test_base_binds_the_role_to_the_operators_service_account() -> None:
    docs = objects(BASE)
    binding = next(doc for doc in docs if doc["kind"] == "ClusterRoleBinding")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    namespace = yaml.safe_load((BASE / "namespaced" / "kustomization.yaml").read_text())
    assert binding["roleRef"]["name"] == "nofx"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": namespace["namespace"],
        }
    ]


def test_base_deployment_runs_the_operator_as_the_design_says() -> None:
    deployment = next(doc for doc in objects(BASE) if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["args"][0] == "operator"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {item["name"]: item for item in container["env"]}
    assert env["NOFX_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "nofx-database", "key": "url"}
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_cluster_scoped_objects_stay_outside_the_namespace_transformer() -> None:
    """Kustomize would put a namespace on the ClusterKopfPeering, a kind it does not know."""
    assert "namespace" not in yaml.safe_load((BASE / "kustomization.yaml").read_text())
    namespaced = objects(BASE / "namespaced")
    assert {doc["kind"] for doc in namespaced} == {
        "Kustomization",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


@pytest.mark.parametrize("region", OVERLAYS)
def test_overlay_sets_its_own_region(region: str) -> None:
    kustomization = yaml.safe_load(
        (KUSTOMIZE / "overlays" / region / "kustomization.yaml").read_text()
    )
    env = [
        item
        for patch in kustomization["patches"]
        for container in yaml.safe_load(patch["patch"])["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
    ]
    assert {"name": "NOFX_REGION", "value": region} in env
    assert kustomization["labels"][0]["pairs"] == {"nofx.dev/region": region}


def test_overlays_exist_for_two_regions() -> None:
    assert OVERLAYS == ["eu-west", "us-east"]


def chart_values_missing(
    values: dict[str, Any], defaults: dict[str, Any], prefix: str = ""
) -> list[str]:
    missing = []
    for key, value in values.items():
        if key not in defaults:
            missing.append(prefix + key)
        elif isinstance(value, dict):
            missing += chart_values_missing(value, defaults[key] or {}, f"{prefix}{key}.")
    return missing


@pytest.mark.parametrize(
    ("path", "spec_path"),
    [("application.yaml", ("spec",)), ("applicationset.yaml", ("spec", "template", "spec"))],
)
def test_argocd_installs_the_chart_with_values_it_knows(
    path: str, spec_path: tuple[str, ...]
) -> None:
    app = yaml.safe_load((ARGOCD / path).read_text())
    spec = app
    for key in spec_path:
        spec = spec[key]
    source = spec["source"]
    assert (ROOT / source["path"] / "Chart.yaml").is_file()
    assert source["helm"]["releaseName"] == "nofx"
    assert spec["destination"]["namespace"] == "nofx-system"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values_missing(source["helm"]["valuesObject"], defaults) == []
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(
        spec["syncPolicy"]["syncOptions"]
    )
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_applicationset_takes_the_region_from_the_cluster_label() -> None:
    appset = yaml.safe_load((ARGOCD / "applicationset.yaml").read_text())
    (generator,) = appset["spec"]["generators"]
    selector = generator["clusters"]["selector"]["matchExpressions"]
    assert selector == [{"key": "nofx.dev/region", "operator": "Exists"}]
    region = '{{ index .metadata.labels "nofx.dev/region" }}'
    assert appset["spec"]["template"]["spec"]["source"]["helm"]["valuesObject"]["region"] == region


# PromQL functions, aggregations and keywords the dashboard uses; any other word is a metric.
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "rate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
}


def defined_metrics() -> set[str]:
    """Every series name operator/nofx/metrics.py exposes, with the client's suffixes."""
    names = re.findall(
        r"\b(?:Counter|Histogram|Gauge|GaugeMetricFamily)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"",
        METRICS.read_text(),
    )
    assert len(names) >= 9, names
    suffixes = ("", "_bucket", "_total", "_sum", "_count")
    return {name + suffix for name in names for suffix in suffixes}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS


def test_metric_name_parsing() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{job=~"$job"}[5m])))'
    assert metric_names(expr) == {"x_bucket"}


def test_dashboard_queries_name_metrics_the_operator_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = defined_metrics()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"unknown metric in {expr!r}: {names - known}"
    shown = {name for expr in exprs for name in metric_names(expr)}
    assert {
        "nofx_runs",
        "nofx_step_attempts_total",
        "nofx_reconcile_duration_seconds_bucket",
        "nofx_run_first_job_latency_seconds_bucket",
        "nofx_step_next_job_latency_seconds_bucket",
        "nofx_step_queue_seconds_bucket",
        "nofx_mirror_lag_seconds_bucket",
        "nofx_mirror_pending_age_seconds",
        "nofx_mirror_events_total",
        "nofx_mirror_errors_total",
        "nofx_tokens_total",
        "nofx_cost_total",
    } <= shown


def test_dashboard_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("region", "job"):
        query = variables[name]["query"]["query"]
        (metric,) = re.findall(r"label_values\((\w+)", query)
        assert metric in defined_metrics()
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert 'region=~"$region"' in target["expr"] and 'job=~"$job"' in target["expr"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
