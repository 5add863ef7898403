"""etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback."""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from nofx_dev import audit, kueue, pki
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import tool_path

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
CONTROLLERS = ",".join(
    [
        "job-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "ttl-after-finished-controller",
        # For the Helm chart's Deployment.
        "deployment-controller",
        "replicaset-controller",
    ]
)
# Each component its own user, so that the audit log tells their writes apart. All are in
# system:masters: RBAC for the components' own roles is not what these clusters test.
MASTERS = ["system:masters"]
COMPONENT_USERS = {
    "kube-controller-manager": "system:kube-controller-manager",
    "kube-scheduler": "system:kube-scheduler",
    "kwok": "kwok",
}


@dataclass
class ControlPlane:
    """A private Kubernetes control plane whose files all live under state_dir.

    With audit_log, the API server logs every write (who, what, the response code) to
    audit_log_path; see nofx_dev.audit."""

    state_dir: Path
    nodes: int = 2
    audit_log: bool = False
    kueue: bool = False  # also start Kueue (nofx_dev.kueue) with its CRDs and webhooks
    profiling: bool = False  # the API server serves /debug/pprof (make bench --profile)
    processes: list[ManagedProcess] = field(default_factory=list)
    apiserver_port: int = 0
    startup_seconds: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def audit_log_path(self) -> Path:
        return self.state_dir / "logs" / "audit.jsonl"

    def kubeconfig_for(self, user: str, groups: list[str] | None = None) -> Path:
        """A kubeconfig with a client certificate of its own for `user` in `groups` (issued
        now by this cluster's CA; the cluster must have been started)."""
        if not self.apiserver_port:
            raise RuntimeError("start the control plane first")
        return self._user_kubeconfig(f"user-{user.replace(':', '-')}", user, groups or [])

    def _user_kubeconfig(self, stem: str, user: str, groups: list[str]) -> Path:
        pki_dir = self.state_dir / "pki"
        pki.client_certificate(pki_dir, stem, user, groups)
        path = self.state_dir / "kubeconfigs" / f"{stem}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig(pki_dir, path, user, stem)
        return path

    def add_process(self, name: str, argv: list[str]) -> ManagedProcess:
        """Starts one more server that stops with the control plane, before the servers
        started before it."""
        return self._process(name, argv)

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.state_dir / "logs" / f"{name}.log")
        proc.start()
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        started = time.monotonic()
        pki_dir = self.state_dir / "pki"
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        pki.create_pki(pki_dir, SERVICE_IP)
        etcd_port, etcd_peer_port = free_port(), free_port()
        self.apiserver_port = free_port()
        self._write_kubeconfig(pki_dir, self.kubeconfig, "nofx-admin", "admin")
        components = {c: self._user_kubeconfig(c, u, MASTERS) for c, u in COMPONENT_USERS.items()}
        try:
            etcd = self._process("etcd", self._etcd_argv(etcd_port, etcd_peer_port))
            apiserver = self._process("kube-apiserver", self._apiserver_argv(pki_dir, etcd_port))

            def apiserver_ready() -> bool:
                etcd.check_alive()
                apiserver.check_alive()
                return self._get("/readyz") == "ok"

            wait_until(apiserver_ready, timeout, "kube-apiserver /readyz")
            self._process(
                "kube-controller-manager",
                self._controller_manager_argv(pki_dir, components["kube-controller-manager"]),
            )
            self._process("kube-scheduler", self._scheduler_argv(components["kube-scheduler"]))
            self._process("kwok", self._kwok_argv(components["kwok"]))
            self._create_nodes()
            wait_until(self._ready, timeout, "fake Nodes Ready and the default ServiceAccount")
            if self.kueue:
                kueue.start(self, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        # Clients before servers, etcd last: an apiserver without etcd hangs in shutdown.
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def _ready(self) -> bool:
        for proc in self.processes:
            proc.check_alive()
        nodes = json.loads(self._get("/api/v1/nodes") or "{}").get("items", [])
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        service_account = self._get("/api/v1/namespaces/default/serviceaccounts/default")
        return len(ready) >= self.nodes and service_account is not None

    def _ssl_context(self) -> ssl.SSLContext:
        pki_dir = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
        return context

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl_context(), timeout=2
            ) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def _post(self, path: str, body: dict[str, object]) -> None:
        request = urllib.request.Request(
            self.server + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, context=self._ssl_context(), timeout=5).close()

    def _create_nodes(self) -> None:
        for index in range(self.nodes):
            name = f"kwok-node-{index}"
            capacity = {"cpu": "64", "memory": "512Gi", "pods": "2000"}
            self._post(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                        "labels": {
                            "type": "kwok",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                        },
                    },
                    "status": {"allocatable": capacity, "capacity": capacity},
                },
            )

    def _write_kubeconfig(self, pki_dir: Path, path: Path, user: str, stem: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "nofx-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(pki_dir / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(pki_dir / f"{stem}.crt"),
                        "client-key": str(pki_dir / f"{stem}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "nofx-local", "context": {"cluster": "nofx-local", "user": user}}
            ],
            "current-context": "nofx-local",
        }
        path.write_text(json.dumps(config, indent=2))

    def _etcd_argv(self, port: int, peer_port: int) -> list[str]:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return [
            str(tool_path("etcd")),
            "--name=local",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}",
            "--unsafe-no-fsync",  # test data only: durability across power loss is not needed
            "--log-level=warn",
        ]

    def _apiserver_argv(self, pki_dir: Path, etcd_port: int) -> list[str]:
        return [*self._apiserver_flags(pki_dir, etcd_port), *self._audit_flags()]

    def _audit_flags(self) -> list[str]:
        if not self.audit_log:
            return []
        policy = self.state_dir / "audit-policy.json"  # JSON is YAML: the API server reads it
        policy.write_text(json.dumps(audit.POLICY, indent=2))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-format=json",
            # A write is in the log before its response is sent: counts read after a scenario
            # has finished are complete.
            "--audit-log-mode=blocking",
            # 0 would mean lumberjack's default, 100 MB: rotation would pull the file from
            # under readers that keep their place by offset (nofx_dev.audit.AuditLog).
            "--audit-log-maxsize=1000000",
        ]

    def _apiserver_flags(self, pki_dir: Path, etcd_port: int) -> list[str]:
        return [
            str(tool_path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Since 1.37 the endpoint reconciler refuses a loopback address for the `kubernetes`
            # Service; nothing here runs in a Pod that would need that Service.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # Without the node-lifecycle controller nobody would lift the not-ready taint that
            # this plugin puts on new (fake) Nodes.
            "--disable-admission-plugins=TaintNodesByCondition",
            f"--profiling={str(self.profiling).lower()}",
            "--v=1",
        ]

    def _controller_manager_argv(self, pki_dir: Path, kubeconfig: Path) -> list[str]:
        return [
            str(tool_path("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            # Local defaults are tuned for big clusters; tests want Jobs to react quickly.
            "--concurrent-job-syncs=20",
            "--concurrent-gc-syncs=20",
            # client-go's default of 20 requests/s would make the Job controller, not the
            # operator, the bottleneck of every benchmark.
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--v=1",
        ]

    def _scheduler_argv(self, kubeconfig: Path) -> list[str]:
        return [
            str(tool_path("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--secure-port=0",
            "--v=1",
        ]

    def _kwok_argv(self, kubeconfig: Path) -> list[str]:
        stages = self.state_dir / "kwok-stages.yaml"
        stages.write_text(resources.files("nofx_dev").joinpath("kwok-stages.yaml").read_text())
        return [
            str(tool_path("kwok")),
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
        ]
