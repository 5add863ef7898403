"""Kueue's manager beside a local control plane, started on demand: its CRDs and webhook
manifests come from the pinned module (tools/build.sh copies them into the tools cache), its
webhooks are served on loopback with a certificate from the control plane's CA and registered
with `url:` client configs, so the API server really calls them."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nofx_dev import pki
from nofx_dev.processes import free_port, wait_until
from nofx_dev.tools import tool_path, tools_bin_dir

if TYPE_CHECKING:
    from nofx_dev.controlplane import ControlPlane

NAMESPACE = "kueue-system"
# Kueue reads its metrics certificate from this fixed path whenever its internal certificate
# management is off (ours is: the webhook certificate must come from the control plane's CA).
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
# Only the step Jobs' integration: a webhook registered for a kind Kueue does not manage here
# (Pods, Deployments ...) would send those requests to a handler that is not there.
FRAMEWORKS = ["batch/job"]
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}


def manifests_dir() -> Path:
    path = tools_bin_dir().parent / "kueue"
    if not (path / "webhooks.yaml").exists():
        raise RuntimeError(f"Kueue's manifests are missing from {path}: run tools/build.sh")
    return path


def start(plane: ControlPlane, timeout: float = 60.0) -> None:
    """Installs Kueue's CRDs, starts its manager as one of the plane's processes, waits until
    it is ready, then registers its webhooks."""
    directory = plane.state_dir / "kueue"
    certs = directory / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    pki_dir = plane.state_dir / "pki"
    pki.loopback_serving_certificate(pki_dir, "kueue-webhook", "kueue-webhook")
    (certs / "tls.crt").write_bytes((pki_dir / "kueue-webhook.crt").read_bytes())
    (certs / "tls.key").write_bytes((pki_dir / "kueue-webhook.key").read_bytes())
    _provide_metrics_certificate(pki_dir)

    kubectl = _kubectl(plane.kubeconfig)
    crds = manifests_dir() / "crds"
    kubectl("apply", "--server-side", "-f", str(crds))
    # kueue.x-k8s.io_workloads.yaml holds crd/workloads.kueue.x-k8s.io
    names = [f"{p.stem.split('_', 1)[1]}.kueue.x-k8s.io" for p in crds.glob("*.yaml")]

    def established() -> bool:
        # Not `kubectl wait`: it fails on a CRD whose status has no conditions yet.
        found = json.loads(kubectl("get", "crd", *names, "-o", "json"))["items"]
        return all(
            any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
            for crd in found
            for conditions in [(crd.get("status") or {}).get("conditions") or []]
        )

    wait_until(established, timeout, "Kueue's CRDs Established")
    kubectl("create", "namespace", NAMESPACE)

    health_port, webhook_port = free_port(), free_port()
    config = directory / "config.json"  # JSON is YAML: Kueue reads it
    config.write_text(json.dumps(_configuration(health_port, webhook_port, certs), indent=2))
    process = plane.add_process(
        "kueue",
        [
            str(tool_path("kueue")),
            f"--config={config}",
            f"--kubeconfig={plane.kubeconfig_for('kueue', ['system:masters'])}",
            # The visibility API server wants certificates of its own; NOFX does not use it.
            "--feature-gates=VisibilityOnDemand=false",
        ],
    )

    def ready() -> bool:
        process.check_alive()
        return _get(f"http://127.0.0.1:{health_port}/readyz") == "ok"

    wait_until(ready, timeout, "Kueue's /readyz")
    ca_bundle = base64.b64encode((pki_dir / "ca.crt").read_bytes()).decode()
    webhooks = webhook_configurations(
        (manifests_dir() / "webhooks.yaml").read_text(), webhook_port, ca_bundle
    )
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(webhooks))


def webhook_configurations(manifests: str, port: int, ca_bundle: str) -> dict[str, Any]:
    """Kueue's webhook configurations (as its kustomize base has them) pointed at its loopback
    port: each webhook's service reference becomes a `url:` with the same path, and only the
    webhooks of Jobs and of Kueue's own kinds are kept. Returns a v1 List."""
    items = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        kept = []
        for webhook in document.get("webhooks") or []:
            groups = {g for rule in webhook.get("rules") or [] for g in rule.get("apiGroups", [])}
            if not groups <= WEBHOOK_GROUPS:
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": ca_bundle,
            }
            kept.append(webhook)
        document["metadata"] = {"name": f"kueue-{document['metadata']['name']}"}
        document["webhooks"] = kept
        items.append(document)
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _configuration(health_port: int, webhook_port: int, certs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": FRAMEWORKS},
        # Present means on: ClusterQueues of a cohort share by weight, and may preempt to
        # get back to their fair share.
        "fairSharing": {"preemptionStrategies": ["LessThanOrEqualToFinalShare"]},
        # As Kueue's own deployment has them (the default is one worker per kind), and a
        # client that is not the bottleneck of a benchmark, as for the controller-manager.
        "controller": {"groupKindConcurrency": {"Job.batch": 5, "Workload.kueue.x-k8s.io": 5}},
        "clientConnection": {"qps": 300, "burst": 600},
    }


def _provide_metrics_certificate(pki_dir: Path) -> None:
    """Writes the metrics certificate Kueue insists on, unless one is there (another local
    Kueue's: any will do, nobody here checks the metrics endpoint's certificate)."""
    if (METRICS_CERT_DIR / "tls.crt").exists() and (METRICS_CERT_DIR / "tls.key").exists():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise RuntimeError(
            f"Kueue reads its metrics certificate from {METRICS_CERT_DIR}, which this user "
            "cannot create: run once as root, or create it with tls.crt and tls.key"
        ) from error
    pki.loopback_serving_certificate(pki_dir, "kueue-metrics", "kueue-metrics")
    for suffix in ("key", "crt"):  # the key first: a reader that sees the crt finds both
        target = METRICS_CERT_DIR / f"tls.{suffix}"
        target.write_bytes((pki_dir / f"kueue-metrics.{suffix}").read_bytes())
        target.chmod(0o600 if suffix == "key" else 0o644)


def _kubectl(kubeconfig: Path) -> Callable[..., str]:
    def run(*args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    return run


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None
