"""The Helm chart on the real control plane: lint, schema-valid output, install, values refused
with a message naming the value, and RBAC that is enough for the operator and no more. The tests
marked `oldest` are also the chart's half of `make smoke-oldest` (Kubernetes 1.35)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nofx_dev.controlplane import ControlPlane
from nofx_dev.tools import tool_path

from ..conftest import Kubectl
from . import test_runs, test_true_answers
from .conftest import REPO, OperatorProcess

CHART = REPO / "charts" / "nofx"
RELEASE, NAMESPACE = "nofx", "nofx-system"
IDENTITY = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
CONSOLE = f"{RELEASE}-console"
CONSOLE_VALUES = [
    "--set", "console.enabled=true", "--set", "console.database.existingSecret=db-readonly",
    "--set", "console.ingress.enabled=true", "--set", "console.ingress.host=nofx.example.com",
    "--set", "console.networkPolicy.enabled=true",
]  # fmt: skip


def helm(
    plane: ControlPlane | None, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(tool_path("helm")), *args]
    if plane is not None:
        command += ["--kubeconfig", str(plane.kubeconfig)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def plane(start_plane: Callable[..., ControlPlane]) -> ControlPlane:
    return start_plane("chart-plane")


@pytest.fixture(scope="module")
def kube_version(plane: ControlPlane) -> str:
    """The version the running plane reports (tools/build.sh pins it): the chart's target."""
    return str(Kubectl(plane.kubeconfig).json("version")["serverVersion"]["gitVersion"])


@pytest.fixture(scope="module")
def installed(plane: ControlPlane) -> Kubectl:
    kubectl = Kubectl(plane.kubeconfig)
    kubectl.run("create", "namespace", NAMESPACE, check=False)  # another test may have made it
    kubectl(
        "create", "secret", "generic", "nofx-database", "-n", NAMESPACE,
        "--from-literal=url=postgresql://nofx@postgres.invalid/nofx",
    )  # fmt: skip
    # --wait: the migration hook Job and both operator replicas run (on kwok's fake Nodes).
    # Helm checks the chart's kubeVersion against the server's version here.
    helm(
        plane, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--wait", "--timeout", "120s",
        "--set", "region=eu-west", "--set", "database.existingSecret=nofx-database",
    )  # fmt: skip
    return kubectl


@pytest.mark.oldest
def test_lint_is_clean(kube_version: str) -> None:
    result = helm(None, "lint", str(CHART), "--strict", "--kube-version", kube_version,
                  "--set", "region=eu-west")  # fmt: skip
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def crd_schemas(folder: Path) -> str:
    """JSON schemas of every CRD version, where kubeconform looks for custom resources."""
    for path in (REPO / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                target = (
                    folder
                    / spec["group"]
                    / f"{spec['names']['kind'].lower()}_{version['name']}.json"
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(version["schema"]["openAPIV3Schema"]))
    return str(folder) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"


@pytest.mark.oldest
@pytest.mark.parametrize("version", ["1.34.0", "v1.34.9-gke.100"])
def test_a_cluster_older_than_the_supported_range_is_refused(version: str) -> None:
    result = helm(None, "template", RELEASE, str(CHART), "--kube-version", version,
                  "--set", "region=eu-west", check=False)  # fmt: skip
    assert result.returncode != 0
    assert "requires kubeVersion: >=1.35.0-0" in result.stderr, result.stderr


@pytest.mark.oldest
def test_the_oldest_supported_version_renders() -> None:
    """A vendor's 1.35 (a pre-release suffix) is in range: the operator and its validating
    policies, and no MutatingAdmissionPolicy, which 1.35 does not serve."""
    documents = helm(None, "template", RELEASE, str(CHART), "--kube-version", "1.35.0-eks-1",
                     "--set", "region=eu-west").stdout  # fmt: skip
    kinds = {d["kind"] for d in yaml.safe_load_all(documents) if d}
    assert {"Deployment", "ServiceAccount", "ValidatingAdmissionPolicy"} <= kinds, kinds
    assert "MutatingAdmissionPolicy" not in kinds


@pytest.mark.oldest
@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
def test_rendered_output_passes_kubeconform_and_server_validation(
    plane: ControlPlane, tmp_path: Path, scope: str
) -> None:
    values = ["--set", "region=eu-west", "--set", "database.existingSecret=db",
              "--set", f"rbac.scope={scope}",
              "--set", "audit.keySecret=nofx-audit-keys",
              "--set", "accountBudgets.enabled=true"]  # fmt: skip
    if scope == "namespaces":
        values += ["--set", "rbac.namespaces={team-a,team-b}"]
    values += CONSOLE_VALUES
    # --validate: rendered for the running plane's version and APIs, and checked by it.
    rendered = helm(plane, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--validate",
                    *values).stdout  # fmt: skip
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(rendered)
    samples = sorted(
        str(p)
        for p in (REPO / "manifests" / "samples" / "base").glob("*.yaml")
        if not p.name.startswith("kustomiz")  # kustomize's own files are not objects
    )
    assert len(samples) == 5, samples
    # Core kinds need schemas from the internet, which this machine lacks: the real API
    # server's dry run below checks those; kubeconform checks the custom resources.
    result = subprocess.run(
        [str(tool_path("kubeconform")), "-strict", "-summary", "-ignore-missing-schemas",
         "-schema-location", crd_schemas(tmp_path / "schemas"), str(manifests), *samples],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0" in result.stdout
    kubectl = Kubectl(plane.kubeconfig)
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    namespaces = [NAMESPACE, "team-a", "team-b"]
    for name in namespaces:
        kubectl.run("create", "namespace", name, check=False)
    dry_run = kubectl.run("apply", "--dry-run=server", "-f", str(manifests), check=False)
    assert dry_run.returncode == 0, dry_run.stderr


def test_the_audit_key_secret_is_mounted_read_only_and_named_to_the_operator(
    kube_version: str,
) -> None:
    def operator_pod(*values: str) -> dict[str, Any]:
        arguments = ["--kube-version", kube_version, "--set", "region=eu", *values]
        rendered = helm(None, "template", RELEASE, str(CHART), "-n", NAMESPACE, *arguments).stdout
        [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
        pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
        return pod

    pod = operator_pod("--set", "audit.keySecret=nofx-audit-keys")
    [volume] = [v for v in pod["volumes"] if v["name"] == "audit-keys"]
    assert volume["secret"]["secretName"] == "nofx-audit-keys"
    container = pod["containers"][0]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "audit-keys"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NOFX_AUDIT_KEY_DIR"] == mount["mountPath"]
    unkeyed = operator_pod()
    assert "audit-keys" not in str(unkeyed) and "NOFX_AUDIT_KEY_DIR" not in str(unkeyed)


@pytest.mark.oldest
def test_install_creates_the_deployment_rbac_and_service(installed: Kubectl) -> None:
    deployment = installed.json("get", "deployment", RELEASE, "-n", NAMESPACE)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("availableReplicas") == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NOFX_REGION"]["value"] == "eu-west"
    assert env["NOFX_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "nofx-database"
    for kind in ("serviceaccount", "service"):
        name = RELEASE if kind == "serviceaccount" else f"{RELEASE}-metrics"
        installed("get", kind, name, "-n", NAMESPACE)
    installed("get", "clusterrole", RELEASE)
    installed("get", "clusterrolebinding", RELEASE)
    installed("get", "poddisruptionbudget", RELEASE, "-n", NAMESPACE)
    installed("get", "clusterkopfpeering", "nofx")


def minor(version: str) -> int:
    return int(version.removeprefix("v").split(".")[1])


@pytest.mark.oldest
def test_the_identity_policy_is_installed_where_served_else_the_notes_say_so(
    plane: ControlPlane, installed: Kubectl, kube_version: str
) -> None:
    v1 = json.loads(installed("get", "--raw", "/apis/admissionregistration.k8s.io/v1"))
    served = any(r["name"] == "mutatingadmissionpolicies" for r in v1["resources"])
    assert served == (minor(kube_version) >= 36)  # GA, on by default, in 1.36
    notes = helm(plane, "get", "notes", RELEASE, "-n", NAMESPACE).stdout
    if served:
        names = installed("get", "mutatingadmissionpolicies", "-o", "name").split()
        assert {"mutatingadmissionpolicy.admissionregistration.k8s.io/nofx-identity",
                "mutatingadmissionpolicy.admissionregistration.k8s.io/nofx-audit-finalizer",
                } <= set(names)  # fmt: skip
        assert "does not serve" not in notes
    else:
        assert "does not serve admissionregistration.k8s.io/v1 MutatingAdmissionPolicy" in notes


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"region": "EU West"}, "region"),
        ({"region": "eu", "replicaCount": "two"}, "replicaCount"),
        ({"region": "eu", "regoin": "eu"}, "regoin"),
        ({"region": "eu", "rbac": {"create": True, "scope": "namespaces"}}, "namespaces"),
        ({"region": "eu", "rbac": {"create": True, "scope": "everywhere"}}, "scope"),
        ({"region": "eu", "audit": {"keySecret": "Audit_Keys"}}, "keySecret"),
        ({"region": "eu", "console": {"enabled": True, "ingress": {"enabled": True}}}, "host"),
    ],
)
def test_bad_values_are_refused_naming_the_value(
    plane: ControlPlane, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm(plane, "install", f"bad-{uuid.uuid4().hex[:6]}", str(CHART), "-n", NAMESPACE,
                  "-f", str(values_file), check=False)  # fmt: skip
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr


def can_i(
    kubectl: Kubectl, verb: str, resource: str, namespace: str = "default", who: str = IDENTITY
) -> bool:
    result = kubectl.run("auth", "can-i", verb, resource, "-n", namespace, "--as", who, check=False)
    return result.stdout.strip() == "yes"


def test_rbac_grants_no_more_than_needed(installed: Kubectl) -> None:
    for verb, resource in [("create", "jobs.batch"), ("delete", "jobs.batch"), ("list", "pods"),
                           ("watch", "pods"), ("patch", "runs.nofx.dev/status"),
                           ("create", "runs.nofx.dev"),
                           ("watch", "agents.nofx.dev"), ("create", "events"), ("list", "events"),
                           ("watch", "schedules.nofx.dev"), ("watch", "namespaces")]:  # fmt: skip
        assert can_i(installed, verb, resource), f"the operator cannot {verb} {resource}"
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("create", "pods"),
                           ("delete", "pods"), ("update", "agents.nofx.dev"),
                           ("delete", "templates.nofx.dev"), ("create", "deployments.apps"),
                           ("patch", "schedules.nofx.dev"),
                           ("create", "rolebindings.rbac.authorization.k8s.io"),
                           ("get", "configmaps")]:  # fmt: skip
        assert not can_i(installed, verb, resource), f"the operator may {verb} {resource}"


@pytest.fixture(scope="module")
def operator_as_the_chart(
    installed: Kubectl, plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator run locally with a token of the chart's ServiceAccount: only its RBAC."""
    token = installed("create", "token", RELEASE, "-n", NAMESPACE, "--duration", "1h").strip()
    folder = tmp_path_factory.mktemp("chart-identity")
    kubeconfig = folder / "kubeconfig"
    ca = str(plane.state_dir / "pki" / "ca.crt")
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [
            {"name": "local", "cluster": {"server": plane.server, "certificate-authority": ca}}
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
    }))  # fmt: skip
    operator = OperatorProcess(
        plane, folder, "--peering-lifetime", "5", "--pod-create-timeout=15", kubeconfig=kubeconfig
    )
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


SCENARIOS: list[Any] = [
    pytest.param(
        test_runs.test_linear_run_succeeds_with_outputs_passed_downstream, marks=pytest.mark.oldest
    ),
    test_runs.test_retry_then_success,
    test_runs.test_cancel_mid_run,
    test_runs.test_approval_gate_waits_until_approved,
    test_runs.test_for_each_fans_out_over_five_items_and_joins,
    test_runs.test_child_run_step_starts_a_run_and_waits_for_it,
    test_runs.test_ttl_deletes_finished_run_with_its_jobs,
    test_runs.test_template_created_after_the_run,
    # Reads the Job controller's FailedCreate Events: the chart must let it list Events.
    test_true_answers.test_a_job_that_cannot_create_its_pod_says_why_then_fails_in_bounded_time,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
def test_core_scenarios_pass_under_the_chart_rbac(
    scenario: Callable[..., None],
    operator_as_the_chart: OperatorProcess,
    installed: Kubectl,
) -> None:
    namespace = f"rbac-{uuid.uuid4().hex[:8]}"
    installed("create", "namespace", namespace)
    installed("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # The chart's nofx-agent-access policy: the Pod-less scenario's Agent names a missing one.
    installed("annotate", "namespace", namespace, "nofx.dev/agent-service-accounts=nobody-made-me")
    scenario(operator_as_the_chart, installed, namespace)
    # A 403 the operator got (not a step's message that quotes the Job controller's).
    log = operator_as_the_chart.log_path.read_text()
    assert "ForbiddenException" not in log, "the operator was refused something"


def cluster_role_rules(documents: str) -> list[dict[str, Any]]:
    roles = [d for d in yaml.safe_load_all(documents) if d and d["kind"] == "ClusterRole"]
    assert len(roles) == 1, [r["metadata"]["name"] for r in roles]
    return sorted(roles[0]["rules"], key=lambda rule: json.dumps(rule, sort_keys=True))


@pytest.mark.parametrize("overlay", ["eu-west", "us-east"])
def test_kustomize_overlays_pass_server_validation_with_the_charts_rbac(
    plane: ControlPlane, kube_version: str, overlay: str
) -> None:
    kubectl = Kubectl(plane.kubeconfig)
    rendered = kubectl("kustomize", str(REPO / "manifests" / "kustomize" / "overlays" / overlay))
    kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "kustomize" / "base" / "crds"))
    kubectl.run("create", "namespace", NAMESPACE, check=False)
    # --force-conflicts: in this module Helm may own the same objects already.
    dry_run = kubectl.run("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                          "-f", "-", input=rendered, check=False)  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stderr
    chart = helm(None, "template", RELEASE, str(CHART), "-n", NAMESPACE,
                 "--kube-version", kube_version, "--set", "region=eu-west").stdout  # fmt: skip
    assert cluster_role_rules(rendered) == cluster_role_rules(chart)


def rendered_objects(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The chart rendered without a cluster, for a supported version."""
    documents = helm(
        None, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.37.2",
        "--set", "region=eu-west", *values,
    ).stdout  # fmt: skip
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(documents) if d}


@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
def test_kueue_enabled_adds_the_flag_and_reading_workloads_only(scope: str) -> None:
    values = ["--set", f"rbac.scope={scope}", "--set", "rbac.namespaces={team-a}"]

    def kueue_rules(objects: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            rule
            for (kind, _), document in objects.items()
            if kind in ("ClusterRole", "Role")
            for rule in document["rules"]
            if "kueue.x-k8s.io" in rule["apiGroups"]
        ]

    def args(objects: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
        return list(
            objects[("Deployment", RELEASE)]["spec"]["template"]["spec"]["containers"][0]["args"]
        )

    off = rendered_objects(*values)
    assert not kueue_rules(off)
    assert "--kueue" not in args(off)
    on = rendered_objects(*values, "--set", "kueue.enabled=true")
    assert kueue_rules(on) == [
        {
            "apiGroups": ["kueue.x-k8s.io"],
            "resources": ["workloads"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert "--kueue" in args(on)


def test_account_budgets_are_off_by_default_and_read_from_the_release_namespace() -> None:
    def args(objects: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
        pod = objects[("Deployment", RELEASE)]["spec"]["template"]["spec"]
        return [a for a in pod["containers"][0]["args"] if a.startswith("--account-budgets")]

    plain = rendered_objects("--set", "database.existingSecret=db")
    assert args(plain) == [] and ("Role", f"{RELEASE}-account-budgets") not in plain
    objects = rendered_objects(
        "--set", "database.existingSecret=db", "--set", "accountBudgets.enabled=true",
        "--set", "accountBudgets.interval=10",
    )  # fmt: skip
    assert args(objects) == [
        f"--account-budgets-namespace={NAMESPACE}", "--account-budgets-interval=10",
    ]  # fmt: skip
    role = objects[("Role", f"{RELEASE}-account-budgets")]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    binding = objects[("RoleBinding", f"{RELEASE}-account-budgets")]
    assert binding["subjects"][0]["name"] == RELEASE
    refused = helm(
        None, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.37.2",
        "--set", "region=eu-west", "--set", "accountBudgets.enabled=true", check=False,
    )  # fmt: skip
    assert "accountBudgets.enabled needs database.existingSecret" in refused.stderr


def test_the_console_is_off_by_default_and_on_a_deployment_of_its_own() -> None:
    assert not [key for key in rendered_objects() if "console" in key[1]]
    objects = rendered_objects(*CONSOLE_VALUES)
    deployment = objects[("Deployment", CONSOLE)]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"][:2] == ["console", "--host=0.0.0.0"]
    assert container["image"] == objects[("Deployment", RELEASE)]["spec"]["template"]["spec"][
        "containers"][0]["image"]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    assert env["NOFX_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "db-readonly"
    assert pod["spec"]["serviceAccountName"] == CONSOLE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Neither selects the other's Pods (the operator's Service and PDB, the console's Service).
    operator = objects[("Deployment", RELEASE)]["spec"]["selector"]["matchLabels"]
    assert not operator.items() <= pod["metadata"]["labels"].items()
    assert objects[("Service", CONSOLE)]["spec"]["selector"] == pod["metadata"]["labels"]
    ingress = objects[("Ingress", CONSOLE)]["spec"]["rules"][0]
    assert ingress["host"] == "nofx.example.com"
    assert ingress["http"]["paths"][0]["backend"]["service"]["name"] == CONSOLE
    policy = objects[("NetworkPolicy", CONSOLE)]["spec"]
    assert policy["podSelector"]["matchLabels"] == pod["metadata"]["labels"]


def test_the_consoles_rbac_only_reads(plane: ControlPlane) -> None:
    objects = rendered_objects(*CONSOLE_VALUES)
    for rule in objects[("ClusterRole", CONSOLE)]["rules"]:
        assert rule["verbs"] == ["get", "list", "watch"], rule
    kubectl = Kubectl(plane.kubeconfig)
    kubectl.run("create", "namespace", NAMESPACE, check=False)
    rbac = [objects[key] for key in [("ServiceAccount", CONSOLE), ("ClusterRole", CONSOLE),
                                     ("ClusterRoleBinding", CONSOLE)]]  # fmt: skip
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=document)
    console = f"system:serviceaccount:{NAMESPACE}:{CONSOLE}"
    for verb in ("get", "list", "watch"):
        for resource in ("runs.nofx.dev", "agents.nofx.dev", "templates.nofx.dev", "jobs.batch",
                         "events"):  # fmt: skip
            assert can_i(kubectl, verb, resource, who=console), (
                f"the console cannot {verb} {resource}"
            )
    for verb, resource in [("create", "runs.nofx.dev"), ("patch", "runs.nofx.dev"),
                           ("patch", "runs.nofx.dev/status"), ("delete", "jobs.batch"),
                           ("get", "secrets"), ("list", "pods"), ("get", "configmaps"),
                           ("create", "events")]:  # fmt: skip
        assert not can_i(kubectl, verb, resource, who=console), f"the console may {verb} {resource}"
